"""Training-free closed-form heads on frozen CLIP features: GDA's linear discriminant and
ProKeR's kernel regression around the zero-shot predictor (pure tensor functions).

GDA (Wang et al., ICLR 2024), on L2-normalised support features x_i with labels y_i:
    mu_k       = mean of class k's features
    S          = sum_i (x_i - mu_{y_i})(x_i - mu_{y_i})^T          (scatter of the class-centred features)
    Sigma^-1   = D * pinv(S + tr(S) / (N - 1) * I)                 (the code's "KS" shrinkage estimator)
    w_k        = Sigma^-1 mu_k,   b_k = log p_k - 1/2 mu_k^T Sigma^-1 mu_k,   p_k = 1 / K

ProKeR (Bendou et al., CVPR 2025), support S (features s_j), one-hot Y, zero-shot f_0(x) = x^T W_text
(raw cosines):
    k(x, y)    = exp(-beta (1 - x^T y))
    alpha      = (K_SS / lambda + I)^-1 (Y - f_0(S))               (the code's form of the ridge)
    f(x)       = f_0(x) + k(x, S) alpha
lambda = 0 is the limit alpha = 0, i.e. zero-shot CLIP. The grid search diagonalises K_SS once per
beta (K_SS = U diag(l) U^T, so alpha = U diag(lambda / (l + lambda)) U^T (Y - f_0(S))) and scores
every lambda with matrix products instead of one solve each.
"""

from __future__ import annotations

from typing import Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

SOLVE_DTYPE = torch.float64  # K_SS / lambda + I has a condition number up to |S| / lambda


def accuracy(logits: Tensor, labels: Tensor) -> float:
    return (logits.argmax(dim=1) == labels).float().mean().item() * 100.0


# ----------------------------------------------------------------------------------------- GDA
def class_means(x: Tensor, y: Tensor, num_classes: int) -> Tensor:
    """mu_k, the mean feature of each class: ``[N, D] -> [K, D]`` (a class without samples: 0)."""
    one_hot = F.one_hot(y.long(), num_classes).to(x.dtype)  # [N, K]
    counts = one_hot.sum(0).clamp_min(1.0)
    return one_hot.t() @ x / counts[:, None]


def ks_precision(x: Tensor, y: Tensor, means: Tensor) -> Tensor:
    """The shared precision matrix by GDA's shrinkage estimator: D * pinv(S + tr(S)/(N-1) I)."""
    centred = x - means[y.long()]  # [N, D]
    n, d = centred.shape
    scatter = centred.t() @ centred  # S = (N - 1) * sample covariance
    shrink = scatter.trace() / max(n - 1, 1)  # tr(sample covariance)
    system = scatter + shrink * torch.eye(d, dtype=x.dtype, device=x.device)
    return d * torch.linalg.pinv(system, hermitian=True)  # symmetric: pinv by eigendecomposition


def gda_head(x: Tensor, y: Tensor, num_classes: int, priors: Optional[Tensor] = None) -> Tuple[Tensor, Tensor]:
    """GDA's linear discriminant ``(W [K, D], b [K])`` from support features ``x`` [N, D]
    (L2-normalised here) and labels ``y``; ``priors`` default to uniform 1/K. Computed in float64,
    returned in float32: logits_gda(f) = f W^T + b."""
    x = F.normalize(x.to(SOLVE_DTYPE), dim=-1)
    means = class_means(x, y, num_classes)
    precision = ks_precision(x, y, means)
    if priors is None:
        priors = torch.full((num_classes,), 1.0 / num_classes, dtype=SOLVE_DTYPE, device=x.device)
    w = means @ precision  # w_k = Sigma^-1 mu_k (Sigma^-1 symmetric)
    b = priors.to(SOLVE_DTYPE).log() - 0.5 * (w * means).sum(dim=1)
    return w.float(), b.float()


def gda_logits(f: Tensor, text: Tensor, weight: Tensor, bias: Tensor, logit_scale: float,
               alpha: float) -> Tensor:
    """logit_scale * f W_text^T + alpha * (f W^T + b) for normalised ``f`` [B, D]."""
    return logit_scale * f @ text.t() + alpha * (f @ weight.t() + bias)


def choose_blend(clip_logits: Tensor, head_logits: Tensor, labels: Tensor,
                 alphas: Sequence[float], log=print) -> Tuple[float, float]:
    """The blend weight with the best val accuracy of clip + alpha * head (ties: the first)."""
    best = (float(alphas[0]), -1.0)
    for a in alphas:
        acc = accuracy(clip_logits + float(a) * head_logits, labels)
        log(f"* search: alpha={float(a):g}: val accuracy {acc:.2f}%")
        if acc > best[1]:
            best = (float(a), acc)
    return best


# -------------------------------------------------------------------------------------- ProKeR
def rbf_kernel(x: Tensor, s: Tensor, beta: float) -> Tensor:
    """k(x, s) = exp(-beta (1 - x^T s)) on unit-norm rows: ``[B, D], [S, D] -> [B, S]``."""
    return torch.exp(-float(beta) * (1.0 - x @ s.t()))


def proker_residual(support: Tensor, labels: Tensor, text: Tensor) -> Tensor:
    """Y - f_0(S): one-hot labels minus the zero-shot cosines of the support, [S, K]."""
    return F.one_hot(labels.long(), text.shape[0]).to(support.dtype) - support @ text.t().to(support.dtype)


def proker_fit(support: Tensor, labels: Tensor, text: Tensor, beta: float, lam: float) -> Tensor:
    """alpha = (K_SS / lambda + I)^-1 (Y - f_0(S)), [S, K] float32 (support rows L2-normalised
    here; lambda = 0: the zero-shot limit alpha = 0)."""
    s = F.normalize(support.to(SOLVE_DTYPE), dim=-1)
    r = proker_residual(s, labels, text)
    if lam == 0:
        return torch.zeros_like(r, dtype=torch.float32)
    system = rbf_kernel(s, s, beta) / float(lam) + torch.eye(s.shape[0], dtype=s.dtype, device=s.device)
    return torch.linalg.solve(system, r).float()


def proker_logits(f: Tensor, support: Tensor, alpha: Tensor, text: Tensor, beta: float) -> Tensor:
    """f(x) = f_0(x) + k(x, S) alpha for normalised ``f`` [B, D]: [B, K] (cosine units)."""
    return f @ text.t() + rbf_kernel(f, support, beta) @ alpha


def linspace_grid(spec: Sequence[float]) -> list:
    """``[start, end, count]`` -> the ``count`` values of ``torch.linspace`` (ProKeR's grids)."""
    start, end, count = float(spec[0]), float(spec[1]), int(spec[2])
    return [float(v) for v in torch.linspace(start, end, count, dtype=torch.float64)]


def proker_search(support: Tensor, labels: Tensor, text: Tensor, val_x: Tensor, val_y: Tensor,
                  betas: Sequence[float], lams: Sequence[float], log=print) -> Tuple[float, float, float]:
    """Grid search of (beta, lambda) by val accuracy (beta outer, lambda inner; ties: the first).

    One eigendecomposition of K_SS per beta; every lambda then costs two matrix products.
    ``support``/``val_x`` are L2-normalised here. Returns ``(beta, lambda, val accuracy %)``.
    """
    s = F.normalize(support.to(SOLVE_DTYPE), dim=-1)
    v = F.normalize(val_x.to(SOLVE_DTYPE), dim=-1)
    t = text.to(SOLVE_DTYPE)
    r = proker_residual(s, labels, t)  # [S, K]
    f0 = v @ t.t()  # [B, K]
    best = (float(betas[0]), float(lams[0]), -1.0)
    for beta in betas:
        evals, evecs = torch.linalg.eigh(rbf_kernel(s, s, beta))
        evals = evals.clamp_min(0.0)  # K_SS is PSD; round-off may leave tiny negative eigenvalues
        coeff = evecs.t() @ r  # U^T r, [S, K]
        proj = rbf_kernel(v, s, beta) @ evecs  # K_VS U, [B, S]
        row = []
        for lam in lams:
            shrink = torch.full_like(evals, 0.0) if lam == 0 else float(lam) / (evals + float(lam))
            acc = accuracy(f0 + proj @ (shrink[:, None] * coeff), val_y)
            row.append(acc)
            if acc > best[2]:
                best = (float(beta), float(lam), acc)
        log(f"* search: beta={beta:g}: best val accuracy {max(row):.2f}% over {len(lams)} lambdas")
    return best


def kernel_gib(n: int) -> float:
    """GiB of one float64 [n, n] kernel matrix (the search holds about three)."""
    return n * n * 8 / 2 ** 30 if n > 0 else 0.0



class ClosedFormState(torch.nn.Module):
    """A head whose state is buffers only (nothing is trained); loading a checkpoint takes the
    saved shapes (a support set or class count of another run), so the trainer can check them."""

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        for name, buf in list(self._buffers.items()):
            saved = state_dict.get(prefix + name)
            if buf is not None and saved is not None and saved.shape != buf.shape:
                self._buffers[name] = torch.zeros(saved.shape, dtype=buf.dtype, device=buf.device)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
