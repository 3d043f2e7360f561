"""Mechanisms shared by methods that train through CLIP's encoders (prompt learning).

The sibling of ``fsclip.adapt`` (frozen-trunk methods): the text prompt learner and the
prefix-shared text encoder (CoOp, CoCoOp, ProGrad, KgCoOp, DPT's joint prompts), visual prompt
injection into CLIP's ViT (the DPT family), and the reading of cached image views for methods
whose image encoder stays frozen. It may use ``fsclip.adapt``'s feature cache; ``fsclip.adapt``
never imports it. A method's own pieces (CoCoOp's meta-net, ProGrad's gradient rule) stay in
that method's trainer file; DPT's class-aware prompts (``cavpt.py``: the CAVPT module, its loss,
the prompted forward) sit here because two DPT variants and ``benchmarks/dpt_step.py`` use them
and ``trainers/dpt.py`` (four variants) stays readable without them.

Text prompts (``fsclip.prompting.prompt_learner``; stable API)::

    from fsclip.prompting import TextPromptLearner

    learner = TextPromptLearner(clip_model, classnames, n_ctx=16, ctx_init="", csc=False,
                                position="end", init_std=0.02)
    learner.ctx                          # nn.Parameter [M, width] (generic) or [K, M, width] (CSC)
    learner()                            # prompt embeddings [K, L, width] (L: longest prompt)
    learner.tokens                       # [K, L] token ids in prompt order (argmax = EOT)
    w = learner.text_features(clip_model)         # [K, D] unnormalised, gradients into ctx
    w = learner.text_features(clip_model, ctx=c)  # c [B, M, width] (or [B, K, M, width]): [B, K, D]
    learner.prefix_shared                # True when the prefix-shared encoder is used
    learner.share_prefix = False         # force the plain path (same result, more work)

``ctx_init`` ("a photo of a") initialises a generic context from those words' embeddings (M is
then their word count, as the official code counts; further BPE tokens of a word stay fixed), so
the initial prompts are exactly that template's. The state dict
holds only ``ctx`` (under CoOp's name; CoOp's saved ``token_prefix``/``token_suffix`` are
ignored on load), so a generic context learned on some classes evaluates on others.

Text encoder (``fsclip.prompting.text_encoder``)::

    encode_shared_prefix(clip_model, prefix [B, P, width], suffix [K, S, width], eot [K]) -> [B, K, D]

runs CLIP's causal text transformer once over the shared prefix (SOT + context) and over the K
class suffixes attending to the prefix's keys and values, equal to running the K whole prompts
(``fsclip.clip.text.encode_text_embeddings``, the plain path).

Deep vision-language prompts (``fsclip.prompting.deep``; MaPLe, PromptSRC)::

    deep_text_features(learner, clip_model, [P_1, ..]) -> [K, D]   # P_i [M, width] replace the
                                                                     # context entering text block i
    deep_image_features(visual, images, [V_0, V_1, ..]) -> [B, D]   # V_0 appended before ln_pre,
                                                                     # V_i replace the prompt slots of block i
    DeepPrompts(depth, length, width)                                # learnable [depth, length, width]
    DeepPromptTrainer                                                # the trainer template of both

Class-aware visual prompts (``fsclip.prompting.cavpt``; DPT's CAVPT variants)::

    CAVPT(text_dim, width, K)(tokens [B, N, width], text [B, K_T, D]) -> prompts [B, K_T, width],
                                                                        logits [B, K_T, K]
    cavpt_loss([logits per block], selected [B, K_T], labels [B], mode="soft")  # Eq. 10
    prompted_image_features(visual, images, vpt, cavpt, queries) -> [B, D], [logits per block]

Cached image views for text-only methods (``fsclip.prompting.trainer``):
``PromptLearningTrainer`` (a ``FrozenFeatureTrainer``) trains text-side parameters on CLIP's
frozen image features of ``TRAINER.FEATURES.TRAIN_VIEWS`` augmented views per training image,
read through ``fsclip.adapt``'s feature cache; subclasses (CoOp, CoCoOp, ProGrad, KgCoOp) set
``cfg_name`` and override ``build_prompt_learner``, ``logits`` or ``forward_backward_features``.
"""

from fsclip._lazy import lazy_getattr

_EXPORTS = {
    "TextPromptLearner": "prompt_learner", "POSITIONS": "prompt_learner",
    "encode_shared_prefix": "text_encoder", "shared_prefix_attention": "text_encoder",
    "PromptLearningTrainer": "trainer",
    "DeepPrompts": "deep", "DeepPromptTrainer": "deep", "deep_text_features": "deep",
    "deep_image_features": "deep", "add_prompt_learner_cfg": "trainer", "add_prompting_cfg": "trainer",
}

__all__ = sorted(_EXPORTS)

__getattr__ = lazy_getattr(__name__, _EXPORTS, globals())
