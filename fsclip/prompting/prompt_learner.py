"""CoOp's text prompt learner: learned context vectors around frozen class-name embeddings.

The prompt of class k is the token sequence of ``"<context> <class name>."``, in which the
context words' embeddings are replaced by learned vectors ``ctx`` (CoOp, Zhou et al. 2022):

    end    (default)  [SOT] ctx_1 .. ctx_M  name_k  .  [EOT]
    middle            [SOT] ctx_1 .. ctx_{M/2}  name_k  ctx_{M/2+1} .. ctx_M  .  [EOT]
    front             [SOT] name_k  ctx_1 .. ctx_M  .  [EOT]

``ctx`` is one ``[M, width]`` set shared by all classes (generic) or ``[K, M, width]``
(class-specific, CSC), initialised from N(0, 0.02^2) or from the word embeddings of
``ctx_init`` (e.g. "a photo of a"; M is then its number of words and the context is generic,
as in CoOp; BPE tokens beyond the M-th stay fixed, as in CoOp). Prompts are tokenized to
the longest prompt (short context), not 77 tokens.

State dict: only the learned tensors (``ctx``; subclasses add theirs, e.g. CoCoOp's meta-net),
under CoOp's names, so checkpoints written by CoOp load (its fixed ``token_prefix`` /
``token_suffix`` entries are ignored: they are rebuilt from the current class names, which is
what lets a generic context be evaluated on other classes).
"""

from __future__ import annotations

from typing import Any, List, Optional, Sequence

import torch
import torch.nn as nn
from torch import Tensor

from fsclip.clip.families import as_backbone
from fsclip.errors import ConfigError

from .text_encoder import encode_shared_prefix

POSITIONS = ("end", "middle", "front")
# fixed token embeddings that CoOp-family checkpoints store and loading ignores
FIXED_BUFFERS = ("token_prefix", "token_suffix", "token_midfix")


class TextPromptLearner(nn.Module):
    """Learned context for K class prompts; ``text_features(model)`` encodes them with CLIP.

    Args:
        clip_model: a backbone with the ``text-prompts`` capability (``fsclip.clip.backbone``:
            OpenAI CLIP, OpenCLIP models with CLIP's BPE and a causal text encoder) or a
            clip-anytorch CLIP; its tokenizer and token embedding give the fixed tokens.
        classnames: the K class names, used as given (datasets clean them, e.g. "_" -> " ").
        n_ctx: context length M (ignored when ``ctx_init`` is given).
        ctx_init: words whose embeddings initialise a generic context ("" = random). M is then
            its number of words, as the official code counts (so its checkpoints load): with a word
            of several BPE tokens ("a photo of a heart-shaped": 5 words, 7 tokens) the first M
            tokens are learned and the remaining ones ("-", "shaped") stay fixed text before the
            class name. No option keeps the BPE count: it would learn vectors CoOp keeps fixed, so
            its runs and checkpoints would not compare with CoOp's; to learn every token, write the
            init as single-token words.
        csc: class-specific contexts ``[K, M, width]`` (ignored with ``ctx_init``).
        position: where the class name goes: "end", "middle" or "front".
        init_std: std of the random initialisation (CoOp: 0.02).
        learn_init_words: with ``ctx_init``, learn only the tokens of its first words and keep
            the others fixed text (MaPLe: 2 of "a photo of a", so "of a" stays); 0 (default):
            every word, as CoOp.

    Attributes: ``ctx`` (the parameter), ``tokens`` ``[K, L]`` (token ids in prompt order; argmax
    = EOT), ``n_ctx``, ``n_fixed`` (fixed tokens of ``ctx_init`` after the context), ``n_cls``,
    ``csc``, ``position``, ``init_text`` (the context as text, "X X ..." for a random one),
    ``share_prefix`` (use the prefix-shared encoder where it applies; on by default).
    """

    def __init__(self, clip_model: Any, classnames: Sequence[str], n_ctx: int = 16, ctx_init: str = "",
                 csc: bool = False, position: str = "end", init_std: float = 0.02,
                 learn_init_words: int = 0) -> None:
        super().__init__()
        if position not in POSITIONS:
            raise ConfigError(f'class token position "{position}" is not one of {POSITIONS} '
                              "(the trainer's CLASS_TOKEN_POSITION)")
        classnames = list(classnames)
        if not classnames:
            raise ValueError("a prompt learner needs at least one class name")
        backbone = as_backbone(clip_model)
        backbone.require(["text-prompts"], "a text prompt learner")
        embedding = backbone.token_embedding
        width = embedding.weight.shape[1]
        device = embedding.weight.device
        ctx_init = ctx_init.replace("_", " ").strip()
        self.n_fixed = 0  # tokens of ctx_init after the learned ones, kept fixed (see the docstring)
        if ctx_init:
            n_ctx = len(ctx_init.split())  # words, as the official CoOp/CoCoOp/DPT code counts
            if 0 < learn_init_words < n_ctx:
                n_ctx = int(learn_init_words)  # the first words' tokens learned, the rest fixed
            self.n_fixed = backbone.count_tokens(ctx_init) - n_ctx
            with torch.no_grad():
                init = embedding(backbone.tokenize([ctx_init]).to(device))[0, 1:1 + n_ctx].float()
            ctx = init.clone()
            csc = False
            self.init_text = ctx_init
        else:
            if n_ctx < 1:
                raise ConfigError(f"N_CTX must be >= 1 (or set CTX_INIT), got {n_ctx}")
            ctx = torch.empty((len(classnames), n_ctx, width) if csc else (n_ctx, width))
            nn.init.normal_(ctx, std=init_std)  # on the CPU generator, whatever the device
            ctx = ctx.to(device)
            self.init_text = " ".join(["X"] * n_ctx)
        self.ctx = nn.Parameter(ctx)
        self.n_ctx, self.n_cls, self.csc, self.position = int(n_ctx), len(classnames), bool(csc), position
        self.classnames = classnames
        self.share_prefix = True

        # "<context> <name>." with the context as placeholder words, tokenized to the longest prompt
        tokens = backbone.tokenize([f"{self.init_text} {name}." for name in classnames]).to(device)  # [K, L]
        with torch.no_grad():
            fixed = embedding(tokens).float()  # [K, L, width]
        self.register_buffer("token_prefix", fixed[:, :1], persistent=False)  # SOT
        self.register_buffer("token_suffix", fixed[:, 1 + self.n_ctx:], persistent=False)  # name . EOT pad
        order = self._order([self.n_fixed + backbone.count_tokens(name) for name in classnames], tokens.shape[1])
        self.register_buffer("order", order, persistent=False)  # [K, L] source position of each token
        self.register_buffer("tokens", tokens.gather(1, order), persistent=False)

    def _order(self, name_lens: List[int], length: int) -> Tensor:
        """Per class, the positions of the "end" layout in this learner's layout order."""
        m = self.n_ctx
        rows = []
        for n in name_lens:
            ctx, name, rest = list(range(1, 1 + m)), list(range(1 + m, 1 + m + n)), list(range(1 + m + n, length))
            if self.position == "end":
                row = [0] + ctx + name + rest
            elif self.position == "middle":
                row = [0] + ctx[:m // 2] + name + ctx[m // 2:] + rest
            else:
                row = [0] + name + ctx + rest
            rows.append(row)
        return torch.tensor(rows, dtype=torch.long, device=self.ctx.device)

    # ---------------------------------------------------------------- prompts
    @property
    def prefix_shared(self) -> bool:
        """True when all prompts start with the same SOT + context (generic, class name at the end)."""
        return self.share_prefix and not self.csc and self.position == "end"

    def describe(self) -> str:
        kind = "class-specific" if self.csc else "generic"
        fixed = f" (the last {self.n_fixed} tokens of the init stay fixed)" if self.n_fixed else ""
        return (f'Initial context: "{self.init_text}"; {self.n_ctx} context tokens ({kind}){fixed}, class '
                f"token {self.position}; {self.n_cls} prompts of {self.tokens.shape[1]} tokens")

    def _context(self, ctx: Optional[Tensor]) -> Tensor:
        """``[B, K, M, width]`` context per prompt (B = 1 unless ``ctx`` has a batch dimension)."""
        ctx = self.ctx if ctx is None else ctx
        if ctx.dim() == self.ctx.dim():
            ctx = ctx.unsqueeze(0)
        if ctx.dim() != self.ctx.dim() + 1 or ctx.shape[-2:] != self.ctx.shape[-2:]:
            raise ValueError(f"context of shape {tuple(ctx.shape)} does not fit {tuple(self.ctx.shape)} "
                             "(optionally with a leading batch dimension)")
        if not self.csc:
            ctx = ctx.unsqueeze(1)
        return ctx.expand(ctx.shape[0], self.n_cls, *ctx.shape[-2:])

    def forward(self, ctx: Optional[Tensor] = None) -> Tensor:
        """Prompt embeddings ``[K, L, width]`` (``[B, K, L, width]`` when ``ctx`` has a batch dim:
        ``[B, M, width]`` generic or ``[B, K, M, width]`` class-specific, e.g. CoCoOp's per-image
        contexts). Default ``ctx``: the learned one."""
        batched = ctx is not None and ctx.dim() == self.ctx.dim() + 1
        c = self._context(ctx)  # [B, K, M, width]
        b = c.shape[0]
        prefix = self.token_prefix.expand(b, -1, -1, -1)
        suffix = self.token_suffix.expand(b, -1, -1, -1)
        prompts = torch.cat([prefix.to(c.dtype), c, suffix.to(c.dtype)], dim=2)  # "end" layout
        if self.position != "end":
            index = self.order[None, :, :, None].expand(b, -1, -1, prompts.shape[-1])
            prompts = prompts.gather(2, index)
        return prompts if batched else prompts[0]

    def text_features(self, model: Any, ctx: Optional[Tensor] = None) -> Tensor:
        """CLIP text features of the prompts, unnormalised: ``[K, D]`` (``[B, K, D]`` for a batched
        ``ctx``, see :meth:`forward`), in the model's dtype, with gradients into the context.

        Uses the prefix-shared encoder when every prompt starts with the same SOT + context
        (``prefix_shared``), else the whole prompts through CLIP's transformer; both give the
        same features (tested)."""
        batched = ctx is not None and ctx.dim() == self.ctx.dim() + 1
        backbone = as_backbone(model)
        if self.prefix_shared and backbone.has("prefix-sharing"):
            c = self._context(ctx)[:, 0]  # [B, M, width]
            sot = self.token_prefix[:1].expand(c.shape[0], -1, -1).to(c.dtype)  # [B, 1, width]
            eot = self.tokens.argmax(dim=-1) - (1 + self.n_ctx)
            feats = encode_shared_prefix(backbone, torch.cat([sot, c], dim=1), self.token_suffix, eot)
        else:
            prompts = self(ctx)
            b = prompts.shape[0] if batched else 1
            flat = prompts.reshape(b * self.n_cls, *prompts.shape[-2:])
            feats = backbone.encode_text_embeddings(flat, self.tokens.repeat(b, 1)).reshape(b, self.n_cls, -1)
        return feats if batched else feats[0]

    # ---------------------------------------------------------------- checkpoints
    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,
                              unexpected_keys, error_msgs) -> None:
        for name in FIXED_BUFFERS:
            state_dict.pop(prefix + name, None)  # CoOp's saved fixed tokens: rebuilt for the current classes
        saved = state_dict.get(prefix + "ctx")
        if saved is not None and tuple(saved.shape) != tuple(self.ctx.shape):
            if saved.dim() == 3 and self.ctx.dim() == 3 and saved.shape[1:] == self.ctx.shape[1:]:
                raise ConfigError(
                    f"the saved class-specific context (CSC) was learned for {saved.shape[0]} classes and "
                    f"cannot be used for {self.ctx.shape[0]}: evaluate it on the same classes, or train "
                    "a generic context (CSC False) to transfer to other classes")
            raise ConfigError(
                f"the saved context has shape {tuple(saved.shape)} but this run builds "
                f"{tuple(self.ctx.shape)}: use the N_CTX / CTX_INIT / CSC settings the model was "
                "trained with")
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys,
                                      unexpected_keys, error_msgs)
