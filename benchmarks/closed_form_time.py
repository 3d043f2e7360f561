"""Benchmark: time per run of GDA and ProKeR on cached features (random unit vectors).

Sizes default to ImageNet's at 16 shots: 1000 classes x 16 shots, 1024-d features (RN50), a
few-shot val split of 4 images per class. GDA takes every cached view as a sample (VIEWS 0 with
TRAIN_VIEWS 10: 160,000 samples); ProKeR's kernel is |S|^2, so at ImageNet size it runs on one
view per image (|S| = 16,000, a 1.9 GiB float64 kernel; 10 views would need 190 GiB), as the
code's README advises. Timed (wall clock, one run each after nothing is cached):

* GDA fit: class means, the shrinkage precision (pinv of D x D) and the discriminant;
* GDA blend search: the 7 blend weights scored on val;
* ProKeR fit: one solve of (K_SS / lambda + I) alpha = Y - f_0(S) at given (beta, lambda);
* ProKeR search: ``--betas`` x ``--lambdas`` settings on val (one eigendecomposition per beta).

Measured on this project's 2-core CPU box (shared, so wall > CPU time / 2), torch 2.14, float64:
  GDA,    160,000 samples (1000 x 16 x 10 views), 1024-d: fit 63.6 s wall (33.7 s CPU), blend search 0.4 s
  GDA,     16,000 samples (1 view):                       fit  5.0 s wall ( 3.2 s CPU)
  ProKeR, |S| = 16,000 (1000 x 16 x 1 view):              fit (one solve) 177 s wall (101 s CPU)
  ProKeR, |S| =  4,000 (250 classes' shots, 1000 classes): fit 5.2 s; search 1 beta x 100 lambdas 181 s
          wall (136 s CPU; 100 separate solves would add about 340 s CPU)
On a CPU, ProKeR's search at ImageNet size (an eigendecomposition of 16,000 x 16,000 per beta) is
impractical: run it on a GPU, or on fewer views/classes per run.

    python benchmarks/closed_form_time.py [--classes 1000] [--shots 16] [--dim 1024] [--views 10]
        [--proker-views 1] [--proker-classes 0] [--betas 1] [--lambdas 100] [--device cpu] [--threads N] [--skip-search]
"""

from __future__ import annotations

import argparse
import os.path as osp
import sys
import time

import torch
import torch.nn.functional as F

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
sys.path.insert(0, REPO)

from fsclip.adapt.closed_form import (  # noqa: E402
    choose_blend, gda_head, kernel_gib, linspace_grid, proker_fit, proker_search,
)


CPU_TIMES = []


def timed(fn):
    """(fn(), wall seconds); the process's CPU seconds are appended to CPU_TIMES (on a shared
    machine wall time includes waiting for a core; CPU time / threads is the unloaded estimate)."""
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    t, c = time.perf_counter(), time.process_time()
    out = fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    CPU_TIMES.append(time.process_time() - c)
    return out, time.perf_counter() - t


def cpu() -> str:
    return f"[cpu {CPU_TIMES[-1]:.2f} s]"


def features(n: int, d: int, k: int, device: str, gen: torch.Generator):
    """n unit vectors near k class directions, labels cycling over the classes."""
    centres = F.normalize(torch.randn(k, d, generator=gen), dim=-1)
    y = torch.arange(n) % k
    x = F.normalize(centres[y] + 0.05 * torch.randn(n, d, generator=gen), dim=-1)
    return x.to(device), y.to(device), centres.to(device)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--classes", type=int, default=1000)
    p.add_argument("--shots", type=int, default=16)
    p.add_argument("--dim", type=int, default=1024)
    p.add_argument("--views", type=int, default=10, help="GDA samples per image (cached views)")
    p.add_argument("--proker-views", type=int, default=1, help="ProKeR support samples per image")
    p.add_argument("--proker-classes", type=int, default=0, help="classes of ProKeR's support (0: --classes)")
    p.add_argument("--val-per-class", type=int, default=4)
    p.add_argument("--betas", type=int, default=1, help="betas of the timed ProKeR search")
    p.add_argument("--lambdas", type=int, default=100, help="lambdas of the timed ProKeR search")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--skip-search", action="store_true", help="time ProKeR's fit only")
    a = p.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    gen = torch.Generator().manual_seed(0)
    k, d = a.classes, a.dim
    print(f"torch {torch.__version__}, device {a.device}, {torch.get_num_threads()} threads; "
          f"{k} classes x {a.shots} shots, {d}-d features, val {a.val_per_class}/class")
    _, _, centres = features(k, d, k, a.device, gen)
    text = F.normalize(centres + 0.2 * F.normalize(torch.randn(k, d, generator=gen), dim=-1).to(a.device), dim=-1)
    val_x, val_y, _ = features(k * a.val_per_class, d, k, a.device, gen)

    n_gda = k * a.shots * a.views
    x, y, _ = features(n_gda, d, k, a.device, gen)
    (w, b), t_fit = timed(lambda: gda_head(x, y, k))
    c_fit = cpu()
    vf = F.normalize(val_x, dim=-1)
    clip = 100.0 * vf @ text.t()
    _, t_blend = timed(lambda: choose_blend(clip, vf @ w.t() + b, val_y, [1e-4, 1e-3, 1e-2, 0.1, 1.0, 10.0, 100.0],
                                            log=lambda _: None))
    print(f"GDA     {n_gda:7d} samples ({a.views} views/image): fit {t_fit:7.2f} s {c_fit}, blend search (7) {t_blend:6.2f} s {cpu()}")

    kp = a.proker_classes or k
    n_pk = kp * a.shots * a.proker_views
    x, y, _ = features(n_pk, d, kp, a.device, gen)  # classes 0..kp-1 of the k (the others: no shots)
    print(f"ProKeR  {n_pk:7d} support samples ({a.proker_views} view(s)/image), kernel {kernel_gib(n_pk):.2f} GiB "
          f"float64")
    _, t_pfit = timed(lambda: proker_fit(x, y, text, 2.0, 0.1))
    print(f"ProKeR  fit (one solve): {t_pfit:7.2f} s {cpu()}")
    if not a.skip_search:
        betas, lams = linspace_grid([1.0, 3.0, a.betas]), linspace_grid([0.001, 10.0, a.lambdas])
        _, t_search = timed(lambda: proker_search(x, y, text, val_x, val_y, betas, lams, log=lambda _: None))
        print(f"ProKeR  search {a.betas} beta(s) x {a.lambdas} lambdas: {t_search:7.2f} s "
              f"({t_search / a.betas:.2f} s per beta) {cpu()}")


if __name__ == "__main__":
    main()
