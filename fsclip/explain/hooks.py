"""The public hooks through which ``fsclip-explain`` reads a trained model.

Trainers expose these as plain methods (they import nothing from ``fsclip.explain``); the
analysis modules never touch a trainer's private attributes. A trainer without a hook simply
lacks the method.

``image_logits(images) -> Tensor [N, K]``
    The method's whole forward from preprocessed images ``[N, 3, H, W]`` (the run's test
    transform) to its logits, *with* gradients (no ``no_grad``), equal to the trainer's
    evaluation logits (``restrict_logits(model_inference(images))``). Class text that does not
    depend on the image is encoded once without gradients. Grad-CAM, Shapley values and every
    gradient or perturbation analysis go through it. Trainers: every registered one, through
    ``FrozenFeatureTrainer`` (``logits_from_dense(trunk_features(x))``: SAFE, SAFE_A, VTCLIP,
    CALIP, CALIP_FS, TipAdapter(F), LinearProbe, LPPP, CLIPAdapter, CrossModal, WiSEFT, GDA,
    ProKeR), ``PromptLearningTrainer`` (CoOp, CoCoOp, ProGrad, KgCoOp), ``VisualPromptTrainer``
    (VPT_CLIP, VPT_CLIP_CAVPT, VLP_CLIP, VLP_CLIP_CAVPT), ``ZeroshotCLIP(2)`` and ``CLIPLoRA``.

``attention_maps(images, labels=None) -> Dict[str, Tensor]``
    The attention maps the method's paper draws, from the forward that gives ``"logits"``
    ``[N, K]`` (also in the dict). Every other key without a ``/`` is a map ``[N, S, h, w]`` on
    the encoder's spatial grid (``h x w`` = the attention pool's map or the ViT's patch grid;
    S = heads, or classes for ``cavpt``): softmax weights over the image tokens, so that
    ``maps.sum((-2, -1)) + maps_rest`` is 1 for every row, ``"<name>/rest"`` ``[N, S]`` being the
    weight left on tokens that are no image position (class / mean token, prompts, learned
    tokens). ``labels`` ``[N]`` (true classes) are used where a map depends on them.

    =====================================  ==============================================================
    trainer                                maps
    =====================================  ==============================================================
    ZeroshotCLIP(2), CoOp, CoCoOp,         ``cls`` (ViT: the class token's row of the last block's
    ProGrad, KgCoOp                        attention) or ``attnpool`` (ResNet: the attention pool's
                                           query); prompts are text-side, the image encoder is CLIP's
    SAFE, SAFE_A                           ``attnpool_o``, ``attnpool_f``: the query of the original and
                                           the fine-tuned pooling (ViT: class token, last block)
    VPT_CLIP, VLP_CLIP (+ _CAVPT)          ``cls``: the class token's last-block attention in the
                                           prompted forward; with CAVPT also ``cavpt`` ``[N, K_T, h, w]``
                                           (each top-K class's attention in the last CAVPT block) and
                                           ``cavpt/classes`` ``[N, K_T]`` (their class indices)
    VTCLIP                                 ``layer<l>_pred``, ``layer<l>_true``: decoder block l's
                                           cross-attention of the predicted / true class's text over
                                           the positions of V_s, per head
    =====================================  ==============================================================
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional

from fsclip.errors import ConfigError

HOOKS = ("image_logits", "attention_maps")


def trainers_with(hook: str) -> List[str]:
    """The registered trainers that have ``hook`` (sorted names)."""
    import fsclip.trainers  # noqa: F401  (registers them)
    from fsclip.backend import TRAINER_REGISTRY

    names = []
    for name in TRAINER_REGISTRY.registered_names():
        cls = TRAINER_REGISTRY.get(name)
        if isinstance(cls, type) and callable(getattr(cls, hook, None)):
            names.append(name)
    return sorted(names)


def require_hook(trainer: Any, hook: str, what: str, label: str = "") -> Any:
    """``trainer``'s bound ``hook``, else one ConfigError naming the trainers that have it."""
    method = getattr(trainer, hook, None)
    if callable(method):
        return method
    name = label or type(trainer).__name__
    raise ConfigError(f"{name} has no {what} (hook {hook}); the methods that have them: "
                      f"{', '.join(trainers_with(hook))}. Pass --run folders of those methods")


def attention_maps(trainer: Any, images: Any, labels: Optional[Any] = None, label: str = "") -> Dict[str, Any]:
    """``trainer.attention_maps(images, labels)`` (a ConfigError when it has none)."""
    return require_hook(trainer, "attention_maps", "attention maps", label)(images, labels)
