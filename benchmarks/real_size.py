"""Every trainer at a real model size: trained parameters, one step's time, peak memory.

Per trainer and release (default ViT-B/16 and RN50, release-shaped random weights from
``fsclip.clip.real_sizes``, 100 classes at 224 px, 1 shot; ``fsclip.kit.realsize``), each in a
fresh subprocess so that its peak memory is its own:

- ``trained``: parameters with ``requires_grad`` in the trainer's registered models;
- ``step``: one training step on a batch of ``--batch`` training images, median of ``--repeats``
  after one warm-up. CoOp family: one prompt-learner step on the batch's cached image features
  (``forward_backward_features``; the text encoder forward and backward over the 100 prompts);
  DPT: ``forward_backward`` on the batch of images (through the prompted image encoder).
  Frozen-feature heads (SAFE, Tip-Adapter, linear probe, ...) have no per-batch step worth the
  name: their column is the whole ``fit`` on the cached features (search included);
- ``/ zero-shot``: ``step`` over zero-shot inference of the same batch (CLIP's image encoder on
  the images plus the cosine logits against the 100 cached class texts);
- ``peak``: CUDA ``max_memory_allocated``, or on a CPU the process's peak RSS (``ru_maxrss``;
  the whole run: weights, feature extraction and the step).

    python benchmarks/real_size.py                       # every trainer, ViT-B/16 and RN50
    python benchmarks/real_size.py --trainers CoOp SAFE --releases ViT-B/16 --precs fp32 fp16

On a CPU the run is long (fp16 runs at about 1 image/s on 2 cores); ``benchmarks/gpu_check.sh``
runs it on a GPU.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Callable, Dict, List

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def timed(fn: Callable[[], object], repeats: int, device: str) -> float:
    def once() -> float:
        if device == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        fn()
        if device == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - t

    once()  # warm-up
    return statistics.median(once() for _ in range(repeats))


def measure(trainer: str, release: str, prec: str, root: str, weights: str, batch: int,
            repeats: int, device: str) -> Dict[str, object]:
    """One trainer's figures (runs in the child process)."""
    from fsclip.adapt.trainer import FrozenFeatureTrainer
    from fsclip.clip.real_sizes import write_real_size_weights
    from fsclip.kit.realsize import real_size_trainer
    from fsclip.prompting.trainer import PromptLearningTrainer
    from fsclip.prompting.visual_trainer import VisualPromptTrainer

    os.environ["FSCLIP_CPU_HALF"] = "1"
    write_real_size_weights(release, weights)
    with contextlib.redirect_stdout(io.StringIO()):
        out = tempfile.mkdtemp(prefix="realsize_run_")
        t = real_size_trainer(trainer, release, prec, root, weights, out, device)
        t.train()
    trained = sum(p.numel() for m in t._models.values() for p in m.parameters() if p.requires_grad)
    images_batch = next(iter(t.train_loader_x))
    images = images_batch["img"][:batch].to(t.device)
    labels = images_batch["label"][:batch].to(t.device)
    clip = t.clip_model
    text = torch.nn.functional.normalize(torch.randn(100, clip.text_projection.shape[1], device=t.device), dim=-1)

    @torch.no_grad()
    def zero_shot() -> torch.Tensor:
        f = clip.encode_image(images.to(clip.dtype)).float()
        return 100.0 * torch.nn.functional.normalize(f, dim=-1) @ text.t()

    kind = "step"
    with contextlib.redirect_stdout(io.StringIO()):
        zs = timed(zero_shot, repeats, device)
        if isinstance(t, PromptLearningTrainer):
            feats = t.global_features("train")[:batch, 0].to(t.device)  # [B, D], first cached view
            step = timed(lambda: t.forward_backward_features(feats, labels[: len(feats)]), repeats, device)
        elif isinstance(t, VisualPromptTrainer):
            t.set_model_mode("train")
            b = {"img": images, "label": labels, **{k: v for k, v in images_batch.items()
                                                     if k not in ("img", "label")}}
            step = timed(lambda: t.forward_backward(b), repeats, device)
        elif isinstance(t, FrozenFeatureTrainer):
            kind = "fit"
            step = timed(t.fit, 1, device)
        else:  # zero-shot: nothing trains
            kind, step = "-", 0.0
    peak = (torch.cuda.max_memory_allocated() if device == "cuda"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    return {"trainer": trainer, "release": release, "prec": prec, "trained": trained, "kind": kind,
            "step_s": step, "zs_s": zs, "peak_gib": peak / 2 ** 30}


def main() -> int:
    import fsclip.datasets  # noqa: F401
    import fsclip.trainers  # noqa: F401
    from fsclip.backend import TRAINER_REGISTRY
    from fsclip.kit.realsize import supports

    shipped = [t for t in TRAINER_REGISTRY.registered_names()
               if TRAINER_REGISTRY.get(t).__module__.startswith("fsclip.trainers.")]
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--trainers", nargs="+", default=shipped)
    p.add_argument("--releases", nargs="+", default=["ViT-B/16", "RN50"])
    p.add_argument("--precs", nargs="+", default=["fp32"])
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--work", default=os.path.join(tempfile.gettempdir(), "fsclip_realsize"),
                   help="folder for the weights, images and feature cache (kept between runs)")
    p.add_argument("--one", action="store_true", help=argparse.SUPPRESS)  # the child process
    args = p.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.threads:
        torch.set_num_threads(args.threads)
    root, weights = os.path.join(args.work, "data"), os.path.join(args.work, "weights")
    if args.one:
        row = measure(args.trainers[0], args.releases[0], args.precs[0], root, weights, args.batch,
                      args.repeats, device)
        print("ROW " + json.dumps(row))
        return 0
    print(f"device: {torch.cuda.get_device_name() if device == 'cuda' else 'cpu'}, "
          f"{torch.get_num_threads()} threads; 100 classes, 224 px, batch {args.batch}")
    print(f"{'trainer':16} {'release':9} {'prec':5} {'trained':>10} {'step (s)':>14} "
          f"{'/ zero-shot':>11} {'peak GiB':>9}")
    failed = 0
    for release in args.releases:
        for prec in args.precs:
            for trainer in args.trainers:
                if not supports(trainer, release):
                    continue
                cmd = [sys.executable, __file__, "--one", "--trainers", trainer, "--releases", release,
                       "--precs", prec, "--batch", str(args.batch), "--repeats", str(args.repeats),
                       "--threads", str(args.threads), "--work", args.work]
                res = subprocess.run(cmd, capture_output=True, text=True)
                rows = [line[4:] for line in res.stdout.splitlines() if line.startswith("ROW ")]
                if res.returncode or not rows:
                    failed += 1
                    tail = (res.stderr or res.stdout).strip().splitlines()[-1:] or ["no output"]
                    print(f"{trainer:16} {release:9} {prec:5} FAILED: {tail[0][:200]}")
                    continue
                r = json.loads(rows[0])
                ratio = f"{r['step_s'] / r['zs_s']:.2f}x" if r["kind"] == "step" else "-"
                step = f"{r['step_s']:.3f} {r['kind']}" if r["kind"] != "-" else "-"
                print(f"{trainer:16} {release:9} {prec:5} {r['trained']:>10,} {step:>14} {ratio:>11} "
                      f"{r['peak_gib']:>9.2f}", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
