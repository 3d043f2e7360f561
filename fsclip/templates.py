"""Prompt templates: the one lookup every trainer uses.

Templates belong to the dataset classes (``template``: CoOp's single template; ``templates``:
the hand-engineered ensemble SAFE uses, i.e. Tip-Adapter's). ``get_templates`` reads them from
the registered class, so a user's own dataset class brings its own templates.
"""

from __future__ import annotations

from typing import List

KINDS = ("classname", "single", "ensemble")


def get_templates(dataset_name: str, kind: str = "single") -> List[str]:
    """Templates (each with one ``{}`` for the class name) for a registered dataset.

    ``kind``: ``"classname"`` -> ``["{}"]``; ``"single"`` -> ``[cls.template]`` (CoOp's);
    ``"ensemble"`` -> ``cls.templates`` (the single template when a class defines none).
    Unknown dataset names or kinds raise ValueError naming the choices.
    """
    if kind not in KINDS:
        raise ValueError(f"unknown template kind {kind!r}; use one of {', '.join(KINDS)}")
    import fsclip.datasets  # noqa: F401  (registers the datasets)
    from fsclip.backend import DATASET_REGISTRY
    from fsclip.engine.registry import did_you_mean

    if dataset_name not in DATASET_REGISTRY.registered_names():
        raise ValueError(f"no registered dataset named {dataset_name!r}"
                         + did_you_mean(dataset_name, DATASET_REGISTRY.registered_names()))
    cls = DATASET_REGISTRY.get(dataset_name)
    if kind == "classname":
        return ["{}"]
    single = getattr(cls, "template", None) or "a photo of a {}."
    if kind == "single":
        return [single]
    return list(getattr(cls, "templates", None) or [single])


def template_pool() -> List[str]:
    """The 180 templates of template mining (Lin et al., CVPR 2023), sorted; each with one ``{}``.

    Shipped as data (``fsclip/template_pool.json``, with its source) so that a run's choice does
    not depend on Python's hash seed, as the source's ``list(set(...))`` does.
    """
    import json
    import os.path as osp

    with open(osp.join(osp.dirname(osp.abspath(__file__)), "template_pool.json"), encoding="utf-8") as f:
        return list(json.load(f)["templates"])
