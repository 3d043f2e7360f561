"""DPT: dual-modality prompt tuning with class-aware visual prompts (paper: dpt-cavpt.txt).

CLIP stays frozen; what trains is prompts (and the CAVPT module):

  Eq. 4-6   visual prompts P_l in the image encoder f, shallow or deep (fsclip.prompting.visual)
  Eq. 2     text prompts t_i = {u_1..u_M, c_i} through the text encoder g (CoOp; VLP variants)
  Eq. 8     p(y=i|x) = softmax_i(sim(f([s_0, P_0, E_0]), w_i) / tau), w_i = g(t_i) (VLP) or the
            hand-crafted template feature of class i (VPT), computed once
  Eq. 9     p^_j = LP(LN(softmax(q_j^T k) v) + s_l), j = 1..K_T: class-aware prompts of block l, from
            queries q_j = MLP(g_j), the template text features of the top-K_T classes of zero-shot CLIP
  Eq. 10    L_cavpt: a K-way classifier on the K_T LN outputs; target one-hot for the slot of the
            ground-truth class, uniform 1/K for the others
  Eq. 12    L = L_ce + L_cavpt

Variants (Table 1): VPT_CLIP (deep; shallow with configs *_shallow.yaml), VPT_CLIP_CAVPT, VLP_CLIP,
VLP_CLIP_CAVPT. The top-K reads cached frozen features of fixed training views (visual_data).

Paper vs fanrena/DPT (``official.yaml`` selects the code's choices; README has the full table):
  query          two-layer MLP of template features  | one Linear of the *learned* text features
  keys/values    image tokens entering block l       | same tokens detached, plus 10 learned tokens
  attention      single head in the width            | single head, q/k projected to 32 dims
  prompt         LP(LN(out) + s_l)                   | LN(out + q)
  CAVPT loss     soft targets (Eq. 10), weight 1     | hard label on the matched slot only, weight 0.3
  CAVPT blocks   last block, beside the deep prompts | replaces the deep prompts there
  VLP            L_ce                                | first 30 epochs: CE(zs image, learned text)
                                                     |   + CE(prompted image, W) + 0.1 L_ce
The paper reads "keys and values from the class token", which makes softmax over one key equal
1 and drops the query; like the code we attend over the block's image tokens (class + patches).
Where the paper is silent we follow the code: prompts after ln_pre without positional embedding,
visual LR 0.01 (shallow 0.001), SGD batch 32, K_T = 10, 1/sqrt(d) attention scale, ReLU MLP.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Dict, Iterator, List, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor
from yacs.config import CfgNode as CN

from fsclip.backend import TRAINER_REGISTRY
from fsclip.clip.attention import map_entries, recorded_attention, spatial_tokens
from fsclip.engine.optim import build_lr_scheduler, build_optimizer
from fsclip.errors import ConfigError
from fsclip.prompting.cavpt import CAVPT, cavpt_loss, prompted_image_features
from fsclip.prompting.prompt_learner import TextPromptLearner
from fsclip.prompting.visual import VisualPrompts
from fsclip.prompting.visual_trainer import VisualPromptTrainer

CHOICES = {"QUERY": ("mlp", "linear"), "QUERY_TEXT": ("handcrafted", "learned"), "OUTPUT": ("lp", "ln_query"),
           "LOSS": ("soft", "matched", "none")}


class DPT(VisualPromptTrainer):
    """Shared by the variants: ``learn_text`` (VLP: CoOp text prompts) and ``use_cavpt``."""

    cfg_node = "DPT"
    learn_text = False
    use_cavpt = False

    @classmethod
    def extend_cfg(cls, cfg) -> None:
        super().extend_cfg(cfg)
        if "DPT" in cfg.TRAINER:
            return
        cfg.TRAINER.DPT = d = CN()
        d.PREC = "fp16"  # fp16 (CUDA; fp32 on a CPU), fp32 or amp
        d.VPT = CN()
        d.VPT.LENGTH = 10  # prompt tokens per block (Eq. 4-6)
        d.VPT.DEEP = True  # new prompts at every block (Eq. 6) or only at the first (Eq. 4-5)
        d.VPT.INIT_STD = 0.02  # prompts drawn from N(0, INIT_STD^2)
        d.TEXT = CN()  # text prompts of the VLP variants (CoOp)
        d.TEXT.N_CTX = 16  # context tokens
        d.TEXT.CTX_INIT = ""  # "" = random init (std 0.02); or words, e.g. "a photo of a"
        d.TEXT.CSC = False  # class-specific contexts
        d.TEXT.CLASS_TOKEN_POSITION = "end"  # end, middle or front
        d.TEXT.LR = 0.002  # CoOp's learning rate and warmup epochs for the text prompts
        d.TEXT.WARMUP_EPOCH = 1
        d.CAVPT = c = CN()
        c.TOPK = 10  # K_T: classes taken from zero-shot CLIP's top scores (Table 3); 0 = all
        c.LAYERS = 1  # CAVPT in the last LAYERS blocks
        c.QUERY = "mlp"  # mlp (two-layer MLP, paper) or linear (code)
        c.QUERY_TEXT = "handcrafted"  # queries from the template features (paper) or the learned ones (code, VLP)
        c.ATTN_DIM = 0  # q/k dimension; 0 = the encoder width (paper), 32 in the code
        c.EXTRA_TOKENS = 0  # learned tokens added to the keys/values (code: 10)
        c.DETACH = False  # stop gradients through the keys/values (code: True)
        c.OUTPUT = "lp"  # lp: LP(LN(out) + s_l) (Eq. 9); ln_query: LN(out + q) (code)
        c.LOSS = "soft"  # soft (Eq. 10), matched (code) or none (Table 2 without the loss)
        c.LOSS_WEIGHT = 1.0  # Eq. 12 (code: 0.3)
        c.REPLACE_VPT = False  # deep prompts stop where CAVPT starts (code)
        d.GUIDANCE_EPOCHS = 0  # VLP (code: 30): epochs with the zero-shot guidance losses

    def build_method(self) -> None:
        d, width = self.cfg.TRAINER.DPT, self.visual.conv1.out_channels
        for key, options in CHOICES.items():
            if d.CAVPT[key] not in options:
                raise ConfigError(f"TRAINER.DPT.CAVPT.{key} is {d.CAVPT[key]!r}; choose one of {options}")
        blocks = len(self.visual.transformer.resblocks)
        self.n_cavpt = int(d.CAVPT.LAYERS) if self.use_cavpt else 0
        if self.use_cavpt and not 1 <= self.n_cavpt <= blocks:
            raise ConfigError(f"TRAINER.DPT.CAVPT.LAYERS must be in 1..{blocks}, got {d.CAVPT.LAYERS}")
        k = int(d.CAVPT.TOPK)
        self.topk = len(self.classnames) if k <= 0 else min(k, len(self.classnames))
        self.guidance = int(d.GUIDANCE_EPOCHS) if self.learn_text else 0
        self.needs_frozen = self.use_cavpt or self.guidance > 0
        depth = blocks - self.n_cavpt if d.CAVPT.REPLACE_VPT else blocks
        self.vpt = VisualPrompts(self.visual, int(d.VPT.LENGTH), bool(d.VPT.DEEP), float(d.VPT.INIT_STD), depth)
        self._register("visual_prompts", self.vpt.to(self.device), self.cfg.OPTIM)
        c, self.cavpt = d.CAVPT, None
        if self.use_cavpt:
            self.cavpt = nn.ModuleList(
                CAVPT(self.text_weights.shape[1], width, len(self.classnames), c.QUERY, int(c.ATTN_DIM),
                      int(c.EXTRA_TOKENS), bool(c.DETACH), c.OUTPUT) for _ in range(self.n_cavpt))
            self._register("cavpt", self.cavpt.to(self.device), self.cfg.OPTIM)
        self._eval_text: Optional[Tensor] = None
        if self.learn_text:  # CoOp's text prompts (Eq. 2), with CoOp's learning rate and warmup
            t = d.TEXT
            self.prompt_learner = TextPromptLearner(self.clip_model, self.classnames, int(t.N_CTX), t.CTX_INIT,
                                                    bool(t.CSC), t.CLASS_TOKEN_POSITION).to(self.device)
            print(self.prompt_learner.describe())
            optim_cfg = self.cfg.OPTIM.clone()
            optim_cfg.defrost()
            optim_cfg.LR, optim_cfg.WARMUP_EPOCH = float(t.LR), int(t.WARMUP_EPOCH)
            self._register("prompt_learner", self.prompt_learner, optim_cfg)

    def per_class_state(self) -> bool:
        """Class-specific text contexts are per class; visual prompts, CAVPT (its K-way classifier
        is for the loss only, see ``CAVPT``) and a generic text context fit any classes
        (``fsclip.model_dir``)."""
        return self.learn_text and bool(self.prompt_learner.csc)

    def official_model_folders(self) -> Dict[str, List[Tuple[str, Dict[str, str]]]]:
        """fanrena/DPT saves the deep visual prompts as ``image_encoder.transformer.ctx_learner``
        (key ``ctx``); its ``prompt_learner`` is CoOp's, as ours."""
        return {"visual_prompts": [("image_encoder.transformer.ctx_learner", {"ctx": "prompts"})]}

    def _register(self, name: str, module: nn.Module, optim_cfg: Any) -> None:
        optim = build_optimizer(module, optim_cfg)
        self.register_model(name, module, optim, build_lr_scheduler(optim, optim_cfg))

    def text_features(self) -> Tensor:
        """The class text features ``[K, D]``: learned (VLP; once per evaluation) or W (VPT)."""
        if not self.learn_text:
            return self.text_weights
        if self._eval_text is not None:
            return self._eval_text
        return self.prompt_learner.text_features(self.clip_model)  # prefix-shared encoder, [K, D]

    @contextmanager
    def fixed_text(self) -> Iterator[None]:
        """The learned class text encoded once, without gradients, for an evaluation (VLP)."""
        with torch.no_grad():
            self._eval_text = self.prompt_learner.text_features(self.clip_model) if self.learn_text else None
        try:
            yield
        finally:
            self._eval_text = None

    @torch.no_grad()
    def test(self, split: Optional[str] = None) -> float:
        with self.fixed_text():
            return super().test(split)

    def image_logits(self, images: Tensor) -> Tensor:
        with self.fixed_text():
            return super().image_logits(images)

    def attention_maps(self, images: Tensor, labels: Optional[Tensor] = None) -> Dict[str, Tensor]:
        """Figs. 1 and 4, from the prompted forward that gives ``logits``: ``cls`` ``[B, H, h, w]``,
        the class token's last-block attention over the patches (``cls/rest``: on itself and the
        prompts); with CAVPT, ``cavpt`` ``[B, K_T, h, w]``, the last CAVPT block's attention of each
        top-K class over the patches, and ``cavpt/classes`` ``[B, K_T]`` (fsclip.explain.hooks)."""
        rows: List[Tensor] = []
        hook = self.cavpt[-1].register_forward_hook(lambda m, args, _: rows.append(m.attention(*args)[0])) \
            if self.cavpt is not None else None
        try:
            with self.fixed_text(), recorded_attention([self.visual.transformer.resblocks[-1].attn]) as seen:
                logits, aux = self.prompted_forward(images)
        finally:
            if hook is not None:
                hook.remove()
        hw = spatial_tokens(self.visual)
        out = {"logits": self.restrict_logits(logits), **map_entries("cls", seen[-1][:, :, 0], 1, hw)}
        if rows:
            out.update(map_entries("cavpt", rows[-1], 1, hw))
            out["cavpt/classes"] = aux["selected"]
        return out

    def forward_logits(self, images: Tensor, frozen: Optional[Tensor]) -> Tuple[Tensor, Dict[str, Any]]:
        text = self.text_features()
        aux: Dict[str, Any] = {"text": text}
        queries = None
        if self.use_cavpt:
            aux["selected"] = self.zero_shot_logits(frozen).topk(self.topk, dim=1).indices  # [B, K_T]
            source = text if self.cfg.TRAINER.DPT.CAVPT.QUERY_TEXT == "learned" else self.text_weights
            queries = source[aux["selected"]]  # [B, K_T, D]
        aux["features"], aux["layer_logits"] = prompted_image_features(
            self.visual, images, self.vpt, self.cavpt, queries)  # Eq. 7, 9
        return self.clip_logits(aux["features"], text), aux  # Eq. 8

    def compute_loss(self, images: Tensor, labels: Tensor, frozen: Optional[Tensor]
                     ) -> Tuple[Tensor, Tensor, Dict[str, float]]:
        logits, aux = self.forward_logits(images, frozen)
        loss = F.cross_entropy(logits, labels)  # Eq. 11
        summary = {"loss_ce": loss.item()}
        if self.epoch < self.guidance:  # code's VLP: general-knowledge guidance
            loss = (F.cross_entropy(self.clip_logits(frozen, aux["text"]), labels)
                    + F.cross_entropy(self.clip_logits(aux["features"], self.text_weights), labels) + 0.1 * loss)
        c = self.cfg.TRAINER.DPT.CAVPT
        if self.use_cavpt and c.LOSS != "none":
            l_cavpt = cavpt_loss(aux["layer_logits"], aux["selected"], labels, c.LOSS)  # Eq. 10
            loss = loss + float(c.LOSS_WEIGHT) * l_cavpt  # Eq. 12
            summary["loss_cavpt"] = l_cavpt.item()
        summary["loss"] = loss.item()
        return loss, logits, summary


@TRAINER_REGISTRY.register()
class VPT_CLIP(DPT):
    """Visual prompts (shallow or deep: TRAINER.DPT.VPT.DEEP) with the hand-crafted classifier."""


@TRAINER_REGISTRY.register()
class VPT_CLIP_CAVPT(DPT):
    """VPT-deep plus class-aware visual prompts in the last block(s)."""
    use_cavpt = True


@TRAINER_REGISTRY.register()
class VLP_CLIP(DPT):
    """CoOp's text prompts and VPT-deep visual prompts, trained together."""
    learn_text = True


@TRAINER_REGISTRY.register()
class VLP_CLIP_CAVPT(DPT):
    """VLP_CLIP plus class-aware visual prompts in the last block(s)."""
    learn_text, use_cavpt = True, True
