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
from typing import Any, Iterable, Optional, Union

import torch

from fsclip.errors import ConfigError, NonFiniteLossError

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


def nonfinite_error(what: str, step: str, precision: str, prec_key: str,
                    lr_key: str = "OPTIM.LR") -> NonFiniteLossError:
    """The one-line error for a NaN/inf ``what`` ("loss", "gradient") at ``step``: under half
    precision it points to ``PREC amp`` / ``fp32`` first (fp16 overflow is the usual cause)."""
    if precision in ("fp16", "amp"):
        fix = (f"rerun with {prec_key} amp or fp32" if precision == "fp16" else f"rerun with {prec_key} fp32")
        fix += f", or with a lower learning rate ({lr_key})"
    else:
        fix = f"lower the learning rate ({lr_key})"
    return NonFiniteLossError(f"the training {what} became NaN/inf at {step} under PREC {precision}: {fix}")


def gradients_finite(params: Iterable[torch.Tensor]) -> bool:
    """Whether every gradient of ``params`` is finite (None gradients count as finite)."""
    return all(bool(torch.isfinite(p.grad).all()) for p in params if p.grad is not None)


class PrecisionChecks:
    """Trainer mixin: NaN/inf losses and gradients stop a run with one line naming the step and
    the PREC key to change. Needs ``self.prec`` (effective precision), ``self.prec_key`` and,
    when amp runs with a scaler, ``self.scaler``; reads the engine's ``epoch`` / ``batch_idx`` /
    ``num_batches`` for the step."""

    prec = "fp32"
    prec_key = "PREC"

    def step_label(self) -> str:
        """Where training is: ``epoch E, batch B (step N)``."""
        epoch, batch = int(getattr(self, "epoch", 0) or 0), int(getattr(self, "batch_idx", 0) or 0)
        per_epoch = int(getattr(self, "num_batches", 1) or 1)
        return f"epoch {epoch + 1}, batch {batch + 1} (step {epoch * per_epoch + batch + 1})"

    def detect_anomaly(self, loss: torch.Tensor) -> None:
        if not torch.isfinite(loss).all():
            raise nonfinite_error("loss", self.step_label(), self.prec, self.prec_key)

    def check_gradients(self, params: Iterable[torch.Tensor]) -> None:
        """Without a GradScaler (which skips such steps itself), a NaN/inf gradient stops the run."""
        if getattr(self, "scaler", None) is None and not gradients_finite(params):
            raise nonfinite_error("gradient", self.step_label(), self.prec, self.prec_key)
