"""The SVD of CLIP's frozen weight matrices, computed once (float32) and cached on disk.

:func:`svd_factors` keeps one file per set of weights, ``<cache_dir>/svd-<sha256>.pt``, named by
the sha256 of their names, shapes and float32 values, written atomically (a temporary file
renamed into place, so concurrent runs at worst compute the same factors twice) and read with
``weights_only=True``. Loaded or computed, the factors are checked against the weights
(``U diag(s) V^T x`` against ``W x`` on two fixed random vectors, relative error below
RESIDUAL_TOL); a file that does not load, is not of these weights or fails the check is
recomputed with a WARNING and rewritten. ViT-B/16's full set (both encoders, every block, six
matrices: float32 U and V^T of 144 matrices) takes 736 MB. Trained singular values belong to the factorisation
they were trained with; the SVD of given weights is unique up to the signs of singular-vector
pairs (which cancel in ``U diag(s) V^T``) as long as the singular values are distinct, as they
are in trained weights. The files sit under the feature cache folder by default and count
towards its TRAINER.FEATURES.MAX_GB; ``gc`` there leaves them alone.
"""

from __future__ import annotations

import hashlib
import os.path as osp
from typing import Dict, Tuple

import torch
from torch import Tensor

from fsclip.adapt.cache import fingerprint_tensors
from fsclip.engine.utils import atomic_torch_save

CACHE_FORMAT = 1
RESIDUAL_TOL = 1e-4  # bound on |W x - U diag(s) V^T x| / |W x| (float32 SVDs at ViT-B/16's sizes: ~2e-6)

Factors = Tuple[Tensor, Tensor, Tensor]  # U [m, k], s [k], V^T [k, n]

def _sound(w: Tensor, f: Factors) -> bool:
    """Whether ``U diag(s) V^T`` reproduces ``W`` on two fixed random vectors (RESIDUAL_TOL)."""
    u, s, vh = f
    if u.shape != (w.shape[0], s.numel()) or vh.shape != (s.numel(), w.shape[1]):
        return False
    x = torch.randn(w.shape[1], 2, generator=torch.Generator().manual_seed(0)).to(u.device)
    ref = w.float().to(u.device) @ x
    err = (ref - u @ (s[:, None] * (vh @ x))).norm() / ref.norm().clamp_min(1e-30)
    return bool(torch.isfinite(err)) and err.item() < RESIDUAL_TOL


def weights_fingerprint(weights: Dict[str, Tensor]) -> str:
    """sha256 of the weights' names, shapes and float32 values (fp16 and fp32 copies of the same
    release share it: its file holds fp16 values, and the SVD is taken of their float32 upcast)."""
    parts = [f"{name}:{fingerprint_tensors({name: w.detach().float()})}" for name, w in sorted(weights.items())]
    return hashlib.sha256("|".join(parts).encode()).hexdigest()


def _decompose(weights: Dict[str, Tensor]) -> Dict[str, Factors]:
    out = {}
    for name, w in weights.items():
        u, s, vh = torch.linalg.svd(w.detach().float(), full_matrices=False)  # [m, k], [k], [k, n]
        out[name] = (u, s, vh)
    return out


def _read(path: str, weights: Dict[str, Tensor], fingerprint: str) -> Dict[str, Factors]:
    """The factors of ``path``, or ValueError/any load error when they are not the weights'."""
    data = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(data, dict) or data.get("format") != CACHE_FORMAT or data.get("fingerprint") != fingerprint:
        raise ValueError("not a factor file of these weights")
    out = {}
    for name, w in weights.items():
        f = tuple(data[f"{name}.{part}"].to(w.device) for part in ("U", "S", "Vh"))
        if not _sound(w, f):
            raise ValueError(f"the factors of {name} do not reproduce its weight")
        out[name] = f
    return out


def svd_factors(weights: Dict[str, Tensor], cache_dir: str = "") -> Dict[str, Factors]:
    """``{name: (U, s, V^T)}`` of each weight (float32 SVD on the weight's device), read from
    ``<cache_dir>/svd-<sha256>.pt`` when it holds them, else computed and stored there
    (``cache_dir`` "": no disk). A cache that cannot be written only costs a note."""
    fingerprint = weights_fingerprint(weights)
    path = osp.join(cache_dir, f"svd-{fingerprint[:40]}.pt") if cache_dir else ""
    if path and osp.isfile(path):
        try:
            factors = _read(path, weights, fingerprint)
            print(f"SVD of {len(weights)} weight matrices loaded from {path}")
            return factors
        except Exception as err:  # a truncated or foreign file: compute again
            print(f"WARNING: the SVD cache file {path} is unusable ({type(err).__name__}: {err}); "
                  "computing the SVD again and rewriting it")
    factors = _decompose(weights)
    bad = [name for name, w in weights.items() if not _sound(w, factors[name])]
    if bad:
        raise FloatingPointError(f"the SVD of {bad[0]} does not reproduce it (non-finite weights?)")
    if path:
        state = {"format": CACHE_FORMAT, "fingerprint": fingerprint}
        for name, (u, s, vh) in factors.items():
            state.update({f"{name}.U": u.cpu(), f"{name}.S": s.cpu(), f"{name}.Vh": vh.cpu()})
        try:
            atomic_torch_save(state, path)
            size = sum(t.numel() * 4 for k, t in state.items() if k.endswith(("U", "S", "Vh")))
            print(f"SVD of {len(weights)} weight matrices computed and cached in {path} ({size / 2**20:.0f} MiB)")
        except OSError as err:
            print(f"Note: the SVD cache {path} cannot be written ({err}); the SVD is computed again next run")
    else:
        print(f"SVD of {len(weights)} weight matrices computed (no disk cache)")
    return factors
