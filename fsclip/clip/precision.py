"""CoOp's precision modes (``TRAINER.<NAME>.PREC``) in one place: what a trainer's CLIP is built
in, where autocast runs, and whether a gradient scaler is used.

* ``fp16``: CLIP's own mixed half weights (``clip.model.convert_weights``: conv/linear/attention
  weights and the text projections in half, LayerNorm computing in fp32). Learnable parameters
  that a method adds (prompt learners, heads, adapters) stay fp32, as in the reference code.
* ``amp``: fp32 weights; the forward runs under ``torch.autocast(dtype=float16)`` and the loss
  goes through a ``GradScaler`` on CUDA.
* ``fp32``: plain fp32. ``auto``: fp16 on CUDA, fp32 elsewhere.

On a CPU, ``fp16`` and ``amp`` fall back to fp32 with one note in the log (CoOp's configs default
to fp16 and so run unchanged on a laptop). ``FSCLIP_CPU_HALF=1`` keeps the half paths on a CPU
(torch computes fp16 matmul, conv, LayerNorm and their backward there): the tests use it to run
every trainer's fp16 and amp code before a GPU run meets it. On a CPU the scaler is not used
(fp16 gradients of the kit's sizes do not underflow there, and the CUDA scaler is CUDA-only).
"""

from __future__ import annotations

import contextlib
import os
from typing import Any, Optional, Union

import torch

from fsclip.errors import ConfigError

PRECISIONS = ("auto", "fp16", "fp32", "amp")
CPU_HALF_ENV = "FSCLIP_CPU_HALF"

def cpu_half_forced() -> bool:
    """Whether ``FSCLIP_CPU_HALF`` asks for the half-precision paths on a CPU."""
    return os.environ.get(CPU_HALF_ENV, "").strip().lower() not in ("", "0", "false", "no")


def normalize_precision(precision: Optional[str]) -> str:
    prec = str(precision or "auto").strip().lower()
    if prec not in PRECISIONS:
        raise ConfigError(f"unknown CLIP precision {precision!r} (the trainer's PREC); use one of "
                          f"{', '.join(PRECISIONS)}")
    return prec


def _half_allowed(device: Union[str, torch.device]) -> bool:
    return torch.device(device).type == "cuda" or cpu_half_forced()


def _note(text: str) -> None:
    print(f"Note: {text}")  # stdout is the run's logger (console + log.txt)


def effective_precision(precision: Optional[str], device: Union[str, torch.device] = "cpu") -> str:
    """What actually runs for ``precision`` on ``device``: ``fp16``, ``amp`` or ``fp32``."""
    prec = normalize_precision(precision)
    if prec == "auto":
        return "fp16" if torch.device(device).type == "cuda" else "fp32"
    if prec in ("fp16", "amp") and not _half_allowed(device):
        _note(f"PREC {prec} needs CUDA; device is {device}, so CLIP runs in fp32 "
                   f"(set {CPU_HALF_ENV}=1 to run the half-precision path on the CPU)")
        return "fp32"
    return prec


def resolve_precision(precision: Optional[str], device: Union[str, torch.device] = "cpu") -> str:
    """``"fp16"`` or ``"fp32"``: the dtype of the weights :func:`fsclip.clip.loader.load_clip`
    builds (``amp`` keeps fp32 weights)."""
    return "fp16" if effective_precision(precision, device) == "fp16" else "fp32"


def autocast(precision: Optional[str], device: Union[str, torch.device] = "cpu") -> Any:
    """``torch.autocast(float16)`` on ``device`` when ``precision`` is an effective ``amp``,
    else a no-op context."""
    if effective_precision(precision, device) != "amp":
        return contextlib.nullcontext()
    return torch.autocast(torch.device(device).type, dtype=torch.float16)


def grad_scaler(precision: Optional[str], device: Union[str, torch.device] = "cpu") -> Optional[Any]:
    """A ``GradScaler`` for an effective ``amp`` on CUDA (None elsewhere)."""
    if torch.device(device).type == "cuda" and effective_precision(precision, device) == "amp":
        return torch.amp.GradScaler("cuda")
    return None
