"""Mechanisms shared by methods that train through CLIP's encoders (prompt learning).

The sibling of ``fsclip.adapt`` (frozen-trunk methods): the text prompt learner and the
prefix-shared text encoder (CoOp, CoCoOp, ProGrad, KgCoOp, DPT's joint prompts), visual prompt
injection into CLIP's ViT (the DPT family), and the reading of cached image views for methods
whose image encoder stays frozen. It may use ``fsclip.adapt``'s feature cache; ``fsclip.adapt``
never imports it. A method's own pieces (CoCoOp's meta-net, ProGrad's gradient rule, CAVPT)
stay in that method's trainer file.
"""
