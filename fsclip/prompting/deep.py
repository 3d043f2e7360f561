"""Deep vision-language prompts (MaPLe, PromptSRC): learned tokens in both of CLIP's encoders,
replaced at the input of every block up to a depth J.

Text (language branch). The class prompt is ``[SOT, ctx_1..ctx_M, <fixed words>, name_k, ., EOT]``
(``TextPromptLearner``: ``ctx`` is the first-layer prompt P_0, embedded with the positional
embedding). At the input of text blocks i = 1..J-1, the hidden states at the context positions
1..M are replaced by the deep prompts P_i ``[M, width]`` (no positional embedding); blocks i >= J
carry them on. Features are read at EOT as CLIP's.

Vision (vision branch). After the patch embedding and positional embedding, the prompt tokens
V_0 ``[M_v, width_v]`` are appended after the patch tokens and pass ``ln_pre`` with them; at the
input of vision blocks i = 1..J-1 the prompt outputs of block i-1 are replaced by V_i; blocks
i >= J carry them. The image feature is ``ln_post(class token) @ proj`` (CLIP's read-out). The
visual prompts come from the text ones through MaPLe's coupling functions ``V_i = F_i(P_i)``
(``trainers/maple.py``) or are learned on their own (PromptSRC's independent V-L prompts).

Identity cases (tested): deep text prompts equal to the frozen model's hidden states at those
positions reproduce CLIP's text features of the prompt exactly (replacing a state by itself),
and without prompt tokens the image path is ``encode_image``.

``DeepPromptTrainer`` is the trainer template of both methods (a ``VisualPromptTrainer``).

The text side runs through the prefix-shared encoder (``encode_shared_prefix(..., deep=...)``:
the SOT + context positions once for all classes) when the learner allows it, else through the
whole prompts block by block (:func:`encode_deep_text`); both give the same features (tested).
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
from torch import Tensor

from fsclip.clip.features import _visual, vit_head
from fsclip.engine.optim import build_lr_scheduler, build_optimizer

from .prompt_learner import TextPromptLearner
from .text_encoder import encode_shared_prefix
from .visual import BlockPrompts, vit_prompted_tokens
from .visual_trainer import VisualPromptTrainer


class DeepPrompts(nn.Module):
    """``depth`` sets of ``length`` learnable tokens of ``width``, N(0, std^2) (MaPLe, PromptSRC:
    0.02); ``prompts[i]`` is the set of block ``i + first``. State dict key: ``prompts``."""

    def __init__(self, depth: int, length: int, width: int, std: float = 0.02) -> None:
        super().__init__()
        if depth < 0 or length < 1:
            raise ValueError(f"deep prompts need depth >= 0 and length >= 1, got {depth} and {length}")
        self.prompts = nn.Parameter(torch.empty(depth, length, width))  # [depth, length, width]
        nn.init.normal_(self.prompts, std=std)  # on the CPU generator

    def __len__(self) -> int:
        return self.prompts.shape[0]

    def as_list(self) -> List[Tensor]:
        return list(self.prompts.unbind(0))


def encode_deep_text(model: Any, prompts: Tensor, tokens: Tensor, deep: Sequence[Tensor], n_ctx: int) -> Tensor:
    """CLIP's text encoder over whole prompt embeddings ``[K, L, width]`` with the positions
    1..n_ctx replaced by ``deep[i-1]`` ``[n_ctx, width]`` at the input of blocks 1..len(deep):
    ``[K, D]`` (the plain path; ``encode_shared_prefix(..., deep=...)`` is the fast one)."""
    dtype = model.dtype
    blocks = list(model.transformer.resblocks)
    if len(deep) >= len(blocks):
        raise ValueError(f"{len(deep)} deep prompts for {len(blocks)} text blocks (at most {len(blocks) - 1})")
    x = prompts.type(dtype) + model.positional_embedding[:tokens.shape[1]].type(dtype)  # [K, L, width]
    x = x.permute(1, 0, 2)  # LND, as clip's blocks take it
    for i, block in enumerate(blocks):
        if 1 <= i <= len(deep):
            d = deep[i - 1].type(dtype)[:, None].expand(n_ctx, x.shape[1], -1)  # [n_ctx, K, width]
            x = torch.cat([x[:1], d, x[1 + n_ctx:]], dim=0)
        x = block(x)
    x = model.ln_final(x.permute(1, 0, 2)).type(dtype)  # [K, L, width]
    eot = tokens.argmax(dim=-1).to(x.device)
    return x[torch.arange(x.shape[0], device=x.device), eot] @ model.text_projection  # [K, D]


def deep_text_features(learner: TextPromptLearner, model: Any, deep: Sequence[Tensor]) -> Tensor:
    """Unnormalised text features ``[K, D]`` of the learner's prompts (its ``ctx`` is P_0) with
    the deep prompts ``deep`` (P_1..P_{J-1}), gradients into both."""
    if learner.csc or learner.position != "end":
        raise ValueError("deep text prompts replace a generic context in front of the class name")
    if learner.prefix_shared:
        sot = learner.token_prefix[:1].to(learner.ctx.dtype)  # [1, 1, width]
        eot = learner.tokens.argmax(dim=-1) - (1 + learner.n_ctx)
        prefix = torch.cat([sot, learner.ctx.unsqueeze(0)], dim=1)  # [1, 1 + M, width]
        return encode_shared_prefix(model, prefix, learner.token_suffix, eot, deep=deep)[0]
    return encode_deep_text(model, learner(), learner.tokens, deep, learner.n_ctx)


def vision_block_prompts(visual: Any, prompts: Sequence[Tensor]) -> BlockPrompts:
    """The :data:`BlockPrompts` callback of deep visual prompts V_0..V_{J-1} (``[M_v, width]``
    each): V_0 through ``ln_pre`` into block 0 (as if appended before it), V_i replacing the
    prompt outputs entering block i < J, the outputs carried on after."""
    visual = _visual(visual)
    first = visual.ln_pre(prompts[0].to(visual.conv1.weight.dtype)) if len(prompts) else None

    def block_prompts(l: int, image_tokens: Tensor, prompt_outputs: Tensor) -> Tensor:
        if l == 0:
            return first if first is not None else image_tokens.new_zeros(0, image_tokens.shape[-1])
        if l < len(prompts):
            return prompts[l]
        return prompt_outputs

    return block_prompts


def deep_image_features(visual: Any, images: Tensor, prompts: Sequence[Tensor]) -> Tensor:
    """The image feature ``[B, D]`` with deep visual prompts V_0..V_{J-1} (see the module docstring)."""
    tokens = vit_prompted_tokens(visual, images, vision_block_prompts(visual, prompts))  # [B, 1 + HW, width]
    return vit_head(visual, tokens)


class DeepPromptTrainer(VisualPromptTrainer):
    """Trainer template of the deep vision-language prompt methods (MaPLe, PromptSRC).

    A subclass sets ``cfg_node`` and implements ``build_prompt_learner()``: a
    ``TextPromptLearner`` (its ``ctx`` is P_0) with ``text_prompts()`` (P_1..P_{J_t-1}) and
    ``visual_prompts()`` (V_0..V_{J_v-1}); it is registered as ``prompt_learner`` with the
    ``OPTIM`` optimizer. The logits are CLIP's (Eq. 1 of both papers) over the deep text
    features (computed once per evaluation) and the deep image features; the loss is
    cross-entropy unless ``compute_loss`` says otherwise.
    """

    def build_prompt_learner(self) -> TextPromptLearner:
        raise NotImplementedError

    def build_method(self) -> None:
        with torch.random.fork_rng(devices=[]):  # the initialisation depends on SEED alone
            torch.manual_seed(max(int(self.cfg.SEED), 0))
            self.prompt_learner = self.build_prompt_learner().to(self.device)
        print(self.prompt_learner.describe())
        optim = build_optimizer(self.prompt_learner, self.cfg.OPTIM)
        self.register_model("prompt_learner", self.prompt_learner, optim, build_lr_scheduler(optim, self.cfg.OPTIM))
        self._eval_text: Optional[Tensor] = None

    def per_class_state(self) -> bool:
        """A generic context and deep prompts fit any classes (base-to-new, cross-dataset)."""
        return False

    def text_features(self) -> Tensor:
        """Unnormalised text features ``[K, D]`` of the deep language prompts."""
        if self._eval_text is not None:
            return self._eval_text
        return deep_text_features(self.prompt_learner, self.clip_model, self.prompt_learner.text_prompts())

    def image_features(self, images: Tensor) -> Tensor:
        """Unnormalised image features ``[B, D]`` with the deep visual prompts."""
        return deep_image_features(self.visual, images, self.prompt_learner.visual_prompts())

    @torch.no_grad()
    def test(self, split: Optional[str] = None) -> float:
        self._eval_text = None
        self._eval_text = self.text_features()  # the text side does not depend on the image
        try:
            return super().test(split)
        finally:
            self._eval_text = None

    def forward_logits(self, images: Tensor, frozen: Optional[Tensor]) -> Tuple[Tensor, Dict[str, Any]]:
        text, image = self.text_features(), self.image_features(images)  # [K, D], [B, D]
        return self.clip_logits(image, text), {"text": text, "features": image}
