"""Every registered trainer in fp32, fp16 and amp on the kit's micro-CLIPs, on the CPU.

``FSCLIP_CPU_HALF=1`` keeps the half-precision paths on a CPU (``fsclip.clip.precision``), so the
code a researcher's ``PREC fp16`` (CoOp's and DPT's default) or ``PREC amp`` run executes on a GPU
runs here: CLIP's half weights next to the methods' fp32 parameters, autocast, the losses and
their backward. Each case trains on 1-shot SynthShapes with the smallest budgets (a few steps) and
evaluates; it asserts that the run finishes with a finite accuracy, that every learnable
parameter is fp32 (as in the reference code: CoOp keeps CLIP in half and the prompt learner in
fp32) and finite, and that the frozen CLIP is in the precision asked for.

``FSCLIP_TEST_DEVICE=cuda`` (``benchmarks/gpu_check.sh``) runs the same cases on a GPU, where amp
also uses a GradScaler.
"""

from __future__ import annotations

import contextlib
import io
import os
import os.path as osp
import re
from typing import Dict, List, Optional, Sequence

import pytest
import torch

import fsclip.datasets  # noqa: F401
import fsclip.trainers  # noqa: F401
from fsclip.backend import DATASET_REGISTRY, TRAINER_REGISTRY, build_trainer
from fsclip.cli import extend_cfg
from fsclip.engine.config import get_cfg_default
from fsclip.engine.utils import set_random_seed
from fsclip.protocol import resolve_max_epoch

from fsclip.datasets.synthetic import SynthShapes
from fsclip.kit import synth
from fsclip.kit.realsize import PREC_NODES, SMOKE_BUDGETS, VIT_ONLY
from kit_learning import REPO, config_file

TEST_PER_CLASS = 3  # SynthShapes' test split cut to 3 images per class: fp16 convs are slow on a CPU

if "SynthShapesMini" not in DATASET_REGISTRY.registered_names():

    @DATASET_REGISTRY.register()
    class SynthShapesMini(SynthShapes):
        """SynthShapes with a test split of TEST_PER_CLASS images per class (tests only)."""

        @classmethod
        def split_file(cls) -> str:
            return SynthShapes.split_file()

        def _generate(self, cfg) -> None:
            synth.ensure_dataset(cfg.DATASET.ROOT, "SynthShapes", synth.DEFAULT_SEED)

        def __init__(self, cfg) -> None:
            super().__init__(cfg)
            seen: Dict[int, int] = {}
            keep = []
            for item in self._test:
                seen[item.label] = seen.get(item.label, 0) + 1
                if seen[item.label] <= TEST_PER_CLASS:
                    keep.append(item)
            self._test = keep

DEVICE = os.environ.get("FSCLIP_TEST_DEVICE", "cpu")

BUDGETS = SMOKE_BUDGETS  # the smallest budgets that still run every part of a method


def precision_keys(cfg) -> List[str]:
    """The PREC keys a trainer may read (frozen-trunk and CoOp family, DPT, MaPLe, zero-shot)."""
    return [f"TRAINER.{node}.PREC" for node in PREC_NODES if node in cfg.TRAINER]


def supports(trainer: str, arch: str) -> bool:
    return arch == "micro_vit" or trainer not in VIT_ONLY  # DPT, MaPLe, PromptSRC prompt a ViT; CLIP-SVD adapts one


def build(trainer: str, arch: str, prec: str, root: str, cache: str, out: str,
          opts: Optional[Sequence] = None):
    cfg = get_cfg_default()
    extend_cfg(cfg)
    cfg.DATASET.NAME = "SynthShapesMini"
    cfg.merge_from_file(config_file(trainer, arch))
    cfg.DATASET.ROOT = root
    cfg.DATASET.NUM_SHOTS = 1
    cfg.SEED = 1
    cfg.TRAINER.NAME = trainer
    cfg.OUTPUT_DIR = out
    cfg.USE_CUDA = DEVICE == "cuda"
    cfg.TRAINER.FEATURES.CACHE_DIR = cache
    cfg.TRAINER.FEATURES.TRAIN_VIEWS = 1
    for key in precision_keys(cfg):
        cfg.merge_from_list([key, prec])
    options = list(BUDGETS.get(trainer, [])) + list(opts or [])
    cfg.merge_from_list(options)
    resolve_max_epoch(cfg, explicit="OPTIM.MAX_EPOCH" in options[::2])
    set_random_seed(1)
    return build_trainer(cfg)


def accuracy_of(log: str) -> float:
    return float(re.findall(r"^\* accuracy: ([\d.naif]+)%$", log, re.M)[-1])


@pytest.fixture
def half_on_cpu(monkeypatch):
    monkeypatch.setenv("FSCLIP_CPU_HALF", "1")


# the shipped trainers (test files register toy trainers of their own in the same registry)
BUILT_IN = [t for t in TRAINER_REGISTRY.registered_names()
            if TRAINER_REGISTRY.get(t).__module__.startswith("fsclip.trainers.")]
CASES = [(t, a, p) for t in BUILT_IN for a in ("micro_rn", "micro_vit")
         for p in ("fp32", "fp16", "amp") if supports(t, a)]


NEXT_PREC = {"fp32": "fp16", "fp16": "amp", "amp": "fp32"}


def first_test_images(trainer, n: int = 8) -> torch.Tensor:
    return next(iter(trainer.test_loader))["img"][:n]


@torch.no_grad()
def logits_of(trainer, images: torch.Tensor) -> torch.Tensor:
    """The trainer's logits of ``images`` (its uncached inference path), float on the CPU."""
    trainer.set_model_mode("eval")
    return trainer.model_inference(images.to(trainer.device)).float().cpu()


# fp16 keeps 11 significant bits (unit roundoff 4.9e-4). Measured over every case here, the
# half-precision logits differ from fp32's by at most 1.1e-3 of the batch's largest |logit|
# (zero-shot cosines: 3.4e-4 on 0.3; LP++: 2.7e-3 on 7.1). The bound, 5e-3 of the largest |logit|
# (about ten fp16 roundings), leaves room for other CPUs and GPUs and still fails on a wrong dtype
# path or a mis-scaled head, which move logits by several per cent.
REL_TOL = 5e-3


@pytest.mark.parametrize("trainer,arch,prec", CASES, ids=["-".join(c) for c in CASES])
def test_trains_saves_and_evaluates_under_another_precision(trainer, arch, prec, half_on_cpu, kit_root,
                                                             kit_cache, tmp_path):
    """Train under ``prec``; the run's dtypes are as the reference keeps them; its checkpoint loads
    into a trainer built under the next precision (fp32 -> fp16 -> amp -> fp32), whose logits on
    the same images match within REL_TOL, and that trainer evaluates."""
    other = NEXT_PREC[prec]
    out = str(tmp_path / "run")
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        t = build(trainer, arch, prec, kit_root, kit_cache, out)
        t.train()
        acc = accuracy_of(buf.getvalue())
        images = first_test_images(t)
        ref = logits_of(t, images)
        e = build(trainer, arch, other, kit_root, kit_cache, str(tmp_path / "eval"))
        if e.get_model_names():
            e.load_model(out)
        got = logits_of(e, images)
        e_acc = e.test()
    assert 0.0 <= acc <= 100.0 and 0.0 <= e_acc <= 100.0, buf.getvalue()[-2000:]
    assert t.clip_model.dtype == (torch.float16 if prec == "fp16" else torch.float32)
    assert e.clip_model.dtype == (torch.float16 if other == "fp16" else torch.float32)
    for name, model in t._models.items():
        for pname, p in model.named_parameters():
            if p.requires_grad:
                assert p.dtype == torch.float32, f"{name}.{pname} is {p.dtype} under PREC {prec}"
                assert torch.isfinite(p).all(), f"{name}.{pname} is not finite under PREC {prec}"
        loaded = e.model_state_dict(name)
        for key, value in t.model_state_dict(name).items():
            assert torch.equal(loaded[key].float().cpu(), value.float().cpu()), f"{name}.{key} not loaded"
    diff = ((got - ref).abs().max() / ref.abs().max()).item()
    assert diff < REL_TOL, f"{trainer} {arch} {prec} -> {other}: max |logit diff| / max |logit| = {diff:.2e}"


# ---------------------------------------------------------------------------- the precision rules
def test_half_needs_cuda_unless_forced(monkeypatch, capsys):
    from fsclip.clip.precision import autocast, effective_precision, grad_scaler

    monkeypatch.delenv("FSCLIP_CPU_HALF", raising=False)
    assert effective_precision("fp16", "cpu") == "fp32"
    assert effective_precision("amp", "cpu") == "fp32"
    assert "FSCLIP_CPU_HALF=1" in capsys.readouterr().out  # the note says how to keep half
    assert effective_precision("auto", "cpu") == "fp32" and effective_precision("auto", "cuda") == "fp16"
    assert effective_precision("fp16", "cuda") == "fp16" and effective_precision("amp", "cuda") == "amp"
    monkeypatch.setenv("FSCLIP_CPU_HALF", "1")
    assert effective_precision("fp16", "cpu") == "fp16" and effective_precision("amp", "cpu") == "amp"
    assert capsys.readouterr().out == ""
    with autocast("amp", "cpu"):
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.float16
    with autocast("fp16", "cpu"):
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.float32
    assert isinstance(grad_scaler("amp", "cuda"), torch.amp.GradScaler)  # amp on CUDA scales the loss
    assert grad_scaler("amp", "cpu") is None and grad_scaler("fp16", "cuda") is None


def test_a_nonfinite_gradient_stops_unless_a_scaler_handles_it():
    from fsclip.clip.precision import PrecisionChecks
    from fsclip.errors import NonFiniteLossError

    p = torch.nn.Parameter(torch.zeros(3))
    p.grad = torch.tensor([0.0, float("inf"), 1.0])
    checks = PrecisionChecks()
    checks.prec, checks.prec_key, checks.epoch, checks.batch_idx, checks.num_batches = "fp16", "TRAINER.X.PREC", 2, 1, 4
    with pytest.raises(NonFiniteLossError, match=r"gradient .* epoch 3, batch 2 \(step 10\) under PREC fp16: "
                                                 r"rerun with TRAINER.X.PREC amp or fp32"):
        checks.check_gradients([p])
    checks.scaler = object()  # GradScaler.step skips a step with inf gradients itself
    checks.check_gradients([p])
    p.grad = torch.ones(3)
    checks.scaler = None
    checks.check_gradients([p])


def kit_run(kit_root, kit_cache, out, trainer, arch, *opts) -> int:
    from fsclip.cli import main

    return main(["--root", kit_root, "--seed", "1", "--trainer", trainer, "--output-dir", out,
                 "--dataset-config-file", osp.join(REPO, "configs", "datasets", "synth_shapes.yaml"),
                 "--config-file", config_file(trainer, arch),
                 "DATASET.NUM_SHOTS", "1", "TRAINER.FEATURES.CACHE_DIR", kit_cache,
                 "TRAINER.FEATURES.TRAIN_VIEWS", "1", *map(str, BUDGETS.get(trainer, [])), *opts])


def error_lines(out: str) -> List[str]:
    with open(osp.join(out, "log.txt")) as f:
        return [line for line in f.read().splitlines() if line.startswith("ERROR:")]


@pytest.mark.parametrize("trainer,arch,key", [("CoOp", "micro_rn", "TRAINER.FEATURES.PREC"),
                                              ("VPT_CLIP", "micro_vit", "TRAINER.DPT.PREC")])
def test_fp16_nan_loss_is_one_error_naming_the_step(trainer, arch, key, half_on_cpu, kit_root, kit_cache,
                                                    tmp_path, capsys):
    out = str(tmp_path / "run")
    code = kit_run(kit_root, kit_cache, out, trainer, arch, key, "fp16", "OPTIM.LR", "1e30",
                   "OPTIM.MAX_EPOCH", "3")
    assert code == 2
    (line,) = error_lines(out)
    assert re.search(r"became NaN/inf at epoch \d+, batch \d+ \(step \d+\) under PREC fp16: rerun with "
                     + re.escape(key) + r" amp or fp32, or with a lower learning rate \(OPTIM.LR\)", line), line
    assert line in capsys.readouterr().out


def test_fp16_diverging_grid_setting_is_dropped_not_fatal(half_on_cpu, kit_root, kit_cache, tmp_path):
    out = str(tmp_path / "run")
    assert kit_run(kit_root, kit_cache, out, "SAFE", "micro_rn", "TRAINER.FEATURES.PREC", "fp16",
                   "TRAINER.SAFE.LRS", "[1e30, 1e-3]") == 0
    with open(osp.join(out, "log.txt")) as f:
        log = f.read()
    assert re.search(r"\* search: .*lr=1e\+30.*: diverged at step \d+", log), log[-3000:]
    assert "Chosen on val" in log and "lr=0.001" in log.split("Chosen on val")[1].splitlines()[0]
    out2 = str(tmp_path / "all")
    assert kit_run(kit_root, kit_cache, out2, "SAFE", "micro_rn", "TRAINER.FEATURES.PREC", "fp16",
                   "TRAINER.SAFE.LRS", "[1e30]") == 2
    (line,) = error_lines(out2)
    assert "diverged" in line and "TRAINER.FEATURES.PREC amp or fp32" in line
