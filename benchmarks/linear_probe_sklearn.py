"""Benchmark: how close the linear probe's C search (torch L-BFGS) comes to scikit-learn's.

CoOp's lpclip search (coarse C grid, then 8 bisection-like steps; ``trainers/linear_probe.py``)
run three ways on the same synthetic few-shot sets: with ``fsclip.adapt.linear.logistic_regression``
at a given (tol, max_iter), with scikit-learn's ``LogisticRegression`` as CoOp runs it (lbfgs,
tol 1e-4, max_iter 1000) and with scikit-learn pushed further (tol 1e-10, max_iter 100,000).
Data: K = 10 Gaussian classes in D = 64 (centres 0.3 N(0, 1), noise N(0, 1), scaled by 4 like
CLIP's unnormalised embeddings), shots 1/2/4 train, min(shots, 4) val (CoOp's val shots), 50
test per class; seeds 1-3. Reported per setting: how often the chosen C equals scikit-learn's,
the largest test-accuracy gap between the two chosen models, and the search's time.

Usage: python benchmarks/linear_probe_sklearn.py [--settings 1e-4:1000 1e-6:1000 ...]
"""

from __future__ import annotations

import argparse
import math
import time
import warnings

import numpy as np
import torch

from fsclip.adapt.linear import logistic_regression
from fsclip.adapt.search import RunResult
from fsclip.trainers.linear_probe import coop_c_search

GRID = [1e6, 1e4, 1e2, 1.0, 1e-2, 1e-4, 1e-6]
K, D = 10, 64


def few_shot_set(seed: int, shots: int):
    gen = torch.Generator().manual_seed(seed)
    centres = 0.3 * torch.randn(K, D, generator=gen)

    def draw(n: int):
        y = torch.arange(K).repeat_interleave(n)
        return 4.0 * (centres[y] + torch.randn(len(y), D, generator=gen)), y

    return draw(shots), draw(min(shots, 4)), draw(50)


def torch_search(train, val, tol: float, max_iter: int):
    (x, y), (vx, vy) = train, val

    def run(c: float) -> RunResult:
        w, b = logistic_regression(x, y, K, c, max_iter, tol)
        acc = ((vx @ w.t() + b).argmax(1) == vy).float().mean().item() * 100
        return RunResult({"C": c}, acc, 0, {"weight": w, "bias": b})

    best = coop_c_search(run, GRID, 8, log=lambda _: None)
    return best.params["C"], lambda f: (f @ best.state["weight"].t() + best.state["bias"]).argmax(1).numpy()


def sklearn_search(train, val, tol: float, max_iter: int):
    from sklearn.linear_model import LogisticRegression
    (x, y), (vx, vy) = [(a.numpy(), b.numpy()) for a, b in (train, val)]

    def fit(c: float):
        clf = LogisticRegression(C=c, max_iter=max_iter, tol=tol).fit(x, y)
        return clf, float(np.mean(clf.predict(vx) == vy))

    peak = GRID[int(np.argmax([fit(c)[1] for c in GRID]))]
    lo, hi = math.log10(0.1 * peak), math.log10(10 * peak)
    for _ in range(8):
        (clf_l, acc_l), (clf_r, acc_r) = fit(10 ** lo), fit(10 ** hi)
        if acc_l < acc_r:
            c, clf, lo = 10 ** hi, clf_r, 0.5 * (lo + hi)
        else:
            c, clf, hi = 10 ** lo, clf_l, 0.5 * (lo + hi)
    return c, lambda f: clf.predict(f.numpy())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--settings", nargs="+", default=["1e-4:1000", "1e-6:1000", "1e-8:10000"],
                    help="torch solver settings tol:max_iter")
    args = ap.parse_args()
    warnings.filterwarnings("ignore")  # scikit-learn's ConvergenceWarning at large C
    cases = [(seed, shots) for seed in (1, 2, 3) for shots in (1, 2, 4)]
    sets = {case: few_shot_set(*case) for case in cases}
    refs = {}
    for name, (tol, it) in {"sklearn (CoOp: tol 1e-4, 1000 it)": (1e-4, 1000),
                            "sklearn (tol 1e-10, 100000 it)": (1e-10, 100000)}.items():
        t0 = time.perf_counter()
        refs[name] = {case: sklearn_search(s[0], s[1], tol, it) for case, s in sets.items()}
        print(f"{name}: {time.perf_counter() - t0:.1f} s for {len(cases)} searches")
    for setting in args.settings:
        tol, it = float(setting.split(":")[0]), int(setting.split(":")[1])
        t0 = time.perf_counter()
        ours = {case: torch_search(s[0], s[1], tol, it) for case, s in sets.items()}
        secs = time.perf_counter() - t0
        for name, ref in refs.items():
            same, gap = 0, 0.0
            for case, (train, val, (tx, ty)) in sets.items():
                same += math.isclose(ours[case][0], ref[case][0], rel_tol=1e-6)
                acc = [100 * float(np.mean(p(tx) == ty.numpy())) for p in (ours[case][1], ref[case][1])]
                gap = max(gap, abs(acc[0] - acc[1]))
            print(f"torch tol {tol:g}, max_iter {it} ({secs:.1f} s for {len(cases)} searches) vs {name}: "
                  f"same C {same}/{len(cases)}, max test-accuracy gap {gap:.2f} points")
        print("  chosen C:", " ".join(f"{c}:{ours[c][0]:.3g}" for c in cases))
    for name, ref in refs.items():
        print(f"  {name} C:", " ".join(f"{c}:{ref[c][0]:.3g}" for c in cases))


if __name__ == "__main__":
    main()
