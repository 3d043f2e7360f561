"""The text classifier W_c of a method, from a prompt choice in its config.

``spec`` is ``classname`` (the bare class name), ``single`` (the dataset's CoOp template),
``ensemble`` (the dataset's hand-engineered templates, Tip-Adapter's), ``mined`` (template
mining: the templates of a 180-template pool with the best zero-shot accuracy on the few-shot
train and val images, chosen by the trainer with :func:`mine_templates`) or the path of a JSON
file ``{"<class name>": ["prompt", ...], ...}`` with prompts written per class (CuPL-style).
"""

from __future__ import annotations

import json
import os.path as osp
from typing import Any, Dict, List, Sequence, Tuple

import torch
from torch import Tensor

from fsclip.clip.text import encode_text, text_classifier
from fsclip.errors import ConfigError
from fsclip.templates import get_templates

KINDS = ("classname", "single", "ensemble")
MINED = "mined"  # chosen from image features at build time (frozen-feature trainers only)


def _not_here(spec: str) -> None:
    if spec == MINED:
        raise ConfigError("TRAINER.FEATURES.PROMPTS mined (template mining) needs the few-shot images' "
                          "frozen features, which only the frozen-feature trainers (SAFE, Tip-Adapter, "
                          "linear probe, ...) have; use classname, single, ensemble or a JSON file of "
                          "prompts per class for this trainer")


@torch.no_grad()
def mine_templates(model: Any, classnames: Sequence[str], features: Tensor, labels: Tensor,
                   pool: Sequence[str], k: int = 21, batch_size: int = 256) -> Tuple[List[str], List[float]]:
    """Template mining (Lin et al., CVPR 2023): the ``k`` templates of ``pool`` whose single-template
    zero-shot classifier is most accurate on ``features`` ``[N, D]`` (image features of the few-shot
    train and val images; never the test set), best first, with their accuracies (%).

    Ties keep the pool's order (the pool is sorted, so the choice is reproducible). The source
    repository ships only the mined lists (chosen on 4-shot val images); this computes them.
    """
    if not 1 <= k <= len(pool):
        raise ConfigError(f"TRAINER.FEATURES.MINED_TEMPLATES must be between 1 and {len(pool)} (the "
                          f"pool's size), got {k}")
    prompts = [t.format(name) for t in pool for name in classnames]
    text = encode_text(model, prompts, batch_size=batch_size).float()
    text = text / text.norm(dim=-1, keepdim=True)
    text = text.reshape(len(pool), len(classnames), -1)  # [T, K, D]
    f = features.float().to(text.device)
    f = f / f.norm(dim=-1, keepdim=True)  # [N, D]
    pred = torch.einsum("nd,tkd->tnk", f, text).argmax(dim=-1)  # [T, N]
    acc = (pred == labels.to(text.device)[None]).float().mean(dim=1) * 100  # [T]
    order = sorted(range(len(pool)), key=lambda i: (-float(acc[i]), i))[:k]
    return [pool[i] for i in order], [float(acc[i]) for i in order]


def read_class_prompts(path: str, classnames: Sequence[str]) -> List[List[str]]:
    """Prompts per class from a CuPL-style JSON file, in ``classnames`` order.

    Keys match a class name exactly, or with underscores and spaces treated alike, ignoring case.
    Every class needs a non-empty list of non-blank strings (an empty prompt would be encoded as
    the bare start and end tokens and pull the class's mean towards a class-agnostic feature).
    """
    if not osp.isfile(path):
        raise ConfigError(f"Prompt file {path} does not exist; set the PROMPTS key to one of {KINDS} "
                          f"or to a JSON file mapping class names to lists of prompts")
    try:
        with open(path, "r", encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError) as err:
        raise ConfigError(f"Prompt file {path} is not valid JSON ({err})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"Prompt file {path} must hold a JSON object {{class name: [prompts]}}")

    def norm(s: str) -> str:
        return s.replace("_", " ").strip().lower()

    lookup: Dict[str, Any] = {norm(k): v for k, v in data.items()}
    out = []
    for name in classnames:
        prompts = data.get(name, lookup.get(norm(name)))
        if not prompts or not isinstance(prompts, list) or not all(isinstance(p, str) for p in prompts):
            raise ConfigError(f'Prompt file {path} has no list of prompts for class "{name}"; '
                              f"add an entry for every class of the dataset")
        empty = [i + 1 for i, p in enumerate(prompts) if not p.strip()]
        if empty:
            raise ConfigError(f'Prompt file {path}: prompt {empty[0]} of {len(prompts)} for class "{name}" '
                              f"is empty{f' ({len(empty)} empty in all)' if len(empty) > 1 else ''}; "
                              "write the prompt or remove it from the list")
        out.append(prompts)
    return out


def class_prompts(spec: str, dataset_name: str, classnames: Sequence[str]) -> List[List[str]]:
    """The prompts of each class (in ``classnames`` order) that ``spec`` stands for."""
    _not_here(spec)
    if spec in KINDS:
        templates = get_templates(dataset_name, spec)
        return [[t.format(name) for t in templates] for name in classnames]
    return read_class_prompts(spec, classnames)


@torch.no_grad()
def prompt_classifier(model: Any, spec: str, dataset_name: str, classnames: Sequence[str]) -> Tensor:
    """``[K, D]`` float32 class weights, each row the normalised mean of normalised prompt features."""
    _not_here(spec)
    if spec in KINDS:
        return text_classifier(model, classnames, get_templates(dataset_name, spec)).float()
    rows = []
    for prompts in read_class_prompts(spec, classnames):
        feats = encode_text(model, prompts).float()
        feats = feats / feats.norm(dim=-1, keepdim=True)
        mean = feats.mean(dim=0)
        rows.append(mean / mean.norm())
    return torch.stack(rows)


@torch.no_grad()
def prompt_features(model: Any, spec: str, dataset_name: str, classnames: Sequence[str]) -> Tuple[Tensor, Tensor]:
    """Every (prompt, class) pair of ``spec`` as a text sample: unnormalised float32 features
    ``[M, D]`` and their class labels ``[M]`` (cross-modal training's extra samples)."""
    per_class = class_prompts(spec, dataset_name, classnames)
    feats = encode_text(model, [p for prompts in per_class for p in prompts]).float()
    labels = torch.cat([torch.full((len(prompts),), k, dtype=torch.long) for k, prompts in enumerate(per_class)])
    return feats, labels.to(feats.device)
