"""GDA and ProKeR: the closed forms against hand computations (and scikit-learn's shrinkage LDA),
ProKeR's eigendecomposition search against solving each setting's system, and the blend /
lambda = 0 endpoints equal to zero-shot CLIP, in the functions and in trained trainers."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from conftest import method_cfg, set_opts, zero_shot_logits

import fsclip.datasets  # noqa: F401
import fsclip.trainers  # noqa: F401
from fsclip.adapt.closed_form import (
    choose_blend, gda_head, gda_logits, linspace_grid, proker_fit, proker_logits, proker_search,
)
from fsclip.backend import build_trainer
from fsclip.clip.tiny import build_tiny_clip, save_tiny_clip
from fsclip.errors import ConfigError

D64 = torch.float64


def blobs(k=4, n=6, d=5, seed=0):
    """n unit-norm samples per class around k random directions; labels sorted by class."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(k, d, generator=g, dtype=D64)
    x = centres.repeat_interleave(n, 0) + 0.5 * torch.randn(k * n, d, generator=g, dtype=D64)
    return F.normalize(x, dim=-1), torch.arange(k).repeat_interleave(n)


# ------------------------------------------------------------------------------------------ GDA
def test_gda_head_is_the_shared_covariance_discriminant_by_hand():
    x, y = blobs(k=3, n=5, d=4)
    k, (n, d) = 3, x.shape
    mus = [sum(x[i] for i in range(n) if y[i] == c) / 5 for c in range(k)]
    scatter = torch.zeros(d, d, dtype=D64)
    for i in range(n):
        e = (x[i] - mus[y[i]])[:, None]
        scatter += e @ e.t()
    cov = scatter / (n - 1)  # sample covariance of the centred features (they have mean 0)
    precision = d * torch.linalg.inv((n - 1) * cov + torch.trace(cov) * torch.eye(d, dtype=D64))
    w_hand = torch.stack([precision @ m for m in mus])
    b_hand = torch.tensor([math.log(1 / k) - 0.5 * float(m @ precision @ m) for m in mus], dtype=D64)
    w, b = gda_head(x, y, k)
    assert torch.allclose(w.double(), w_hand, atol=1e-5, rtol=1e-5)
    assert torch.allclose(b.double(), b_hand, atol=1e-5, rtol=1e-5)


def test_gda_head_matches_sklearn_lda_with_the_equivalent_shrinkage():
    """sklearn: Sigma = (1 - s) S/N + s tr(S/N)/D I. With s = D / (N - 1 + D) this is GDA's
    covariance times D (N-1) / (N (N-1+D)), so sklearn's (decision - log p) is GDA's times c."""
    import numpy as np
    from sklearn.discriminant_analysis import LinearDiscriminantAnalysis

    x, y = blobs(k=4, n=6, d=5, seed=3)
    (n, d), k = x.shape, 4
    s = d / (n - 1 + d)
    lda = LinearDiscriminantAnalysis(solver="lsqr", shrinkage=s, priors=np.full(k, 1 / k)).fit(x.numpy(), y.numpy())
    test = F.normalize(torch.randn(7, d, dtype=D64, generator=torch.Generator().manual_seed(9)), dim=-1)
    sk = torch.from_numpy(lda.decision_function(test.numpy())) - math.log(1 / k)
    w, b = gda_head(x, y, k)
    ours = test @ w.double().t() + b.double() - math.log(1 / k)
    c = n * (n - 1 + d) / (d * (n - 1))
    assert torch.allclose(sk, c * ours, atol=1e-4, rtol=1e-4)
    assert torch.equal(torch.from_numpy(lda.predict(test.numpy())), ours.argmax(1))


def test_gda_blend_zero_is_zero_shot_exactly_and_the_choice_keeps_the_first_best():
    x, y = blobs()
    w, b = gda_head(x, y, 4)
    f, text = x[:5].float(), F.normalize(torch.randn(4, 5), dim=-1)
    assert torch.equal(gda_logits(f, text, w, b, 100.0, 0.0), 100.0 * f @ text.t())
    clip = torch.zeros(4, 2)
    head = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])
    labels = torch.tensor([0, 0, 1, 1])
    assert choose_blend(clip, head, labels, [0.0, 0.5, 2.0], log=lambda _: None) == (0.5, 100.0)  # 0 ties: argmax 0


# --------------------------------------------------------------------------------------- ProKeR
def test_proker_fit_solves_its_kernel_system_by_hand():
    x, y = blobs(k=3, n=4, d=6, seed=1)
    text = F.normalize(torch.randn(3, 6, dtype=D64, generator=torch.Generator().manual_seed(2)), dim=-1)
    beta, lam = 2.5, 0.3
    s = x.shape[0]
    kernel = torch.tensor([[math.exp(-beta * (1 - float(x[i] @ x[j]))) for j in range(s)] for i in range(s)],
                          dtype=D64)
    resid = torch.tensor([[float(y[i] == c) - float(x[i] @ text[c]) for c in range(3)] for i in range(s)],
                         dtype=D64)
    alpha_hand = torch.linalg.solve(kernel / lam + torch.eye(s, dtype=D64), resid)
    alpha = proker_fit(x, y, text.float(), beta, lam)
    assert torch.allclose(alpha.double(), alpha_hand, atol=1e-5)
    q = F.normalize(torch.randn(2, 6, dtype=D64), dim=-1)
    k_q = torch.tensor([[math.exp(-beta * (1 - float(q[b] @ x[j]))) for j in range(s)] for b in range(2)], dtype=D64)
    logits = proker_logits(q.float(), F.normalize(x, dim=-1).float(), alpha, text.float(), beta)
    assert torch.allclose(logits.double(), q @ text.t() + k_q @ alpha_hand, atol=1e-5)


def test_proker_lambda_zero_is_zero_shot_exactly_and_small_lambda_tends_to_it():
    x, y = blobs(k=3, n=4, d=6)
    text = F.normalize(torch.randn(3, 6), dim=-1)
    q = x[:5].float()
    alpha0 = proker_fit(x, y, text, 3.0, 0.0)
    assert not alpha0.any()
    assert torch.equal(proker_logits(q, x.float(), alpha0, text, 3.0), q @ text.t())
    near = proker_logits(q, x.float(), proker_fit(x, y, text, 3.0, 1e-7), text, 3.0)
    assert torch.allclose(near, q @ text.t(), atol=1e-5)


def test_proker_search_equals_solving_every_setting():
    x, y = blobs(k=4, n=3, d=6, seed=5)
    vx, vy = blobs(k=4, n=5, d=6, seed=6)
    text = F.normalize(torch.randn(4, 6, generator=torch.Generator().manual_seed(7)), dim=-1)
    betas, lams = linspace_grid([0.5, 8.0, 4]), [0.0] + linspace_grid([0.01, 3.0, 6])
    best = (None, None, -1.0)
    for beta in betas:
        for lam in lams:
            alpha = proker_fit(x, y, text, beta, lam)
            acc = (proker_logits(vx.float(), x.float(), alpha, text, beta).argmax(1) == vy).float().mean().item() * 100
            if acc > best[2]:
                best = (beta, lam, acc)
    got = proker_search(x, y, text, vx, vy, betas, lams, log=lambda _: None)
    assert got[:2] == best[:2] and got[2] == pytest.approx(best[2])
    assert linspace_grid([0.001, 10.0, 100])[:2] == pytest.approx([0.001, 0.102])  # torch.linspace as the code


# --------------------------------------------------------------------------------------- trainers
@pytest.fixture(scope="module", params=["RN", "ViT"])
def tiny_path(request, tmp_path_factory):
    d = tmp_path_factory.mktemp(f"tiny_cf_{request.param}")
    return save_tiny_clip(build_tiny_clip(request.param, image_resolution=64), str(d / "tiny.pt"))


def trained(toy_root, tmp_path, weights, name, **opts):
    cfg = method_cfg(toy_root, tmp_path, weights, name, 2, "ensemble")
    cfg.TRAINER.PROKER.BETA, cfg.TRAINER.PROKER.LAMBDA = [1.0, 5.0, 3], [0.01, 1.0, 4]
    trainer = build_trainer(set_opts(cfg, **opts))
    trainer.train()
    return trainer


def test_trained_gda_with_blend_zero_and_proker_with_lambda_zero_are_zero_shot(toy_root, tmp_path, tiny_path):
    gda = trained(toy_root, tmp_path, tiny_path, "GDA")
    assert gda.head.weight.abs().sum() > 0  # a real discriminant was fitted
    images = next(iter(gda.test_loader))["img"]
    zs = zero_shot_logits(gda, images, "ensemble")
    assert not torch.allclose(gda.model_inference(images), zs, atol=1e-3)
    gda.head.alpha.fill_(0.0)
    assert torch.allclose(gda.model_inference(images), zs, atol=1e-4, rtol=1e-4)
    pk = trained(toy_root, tmp_path, tiny_path, "ProKeR")
    assert pk.head.support.shape[0] == 2 * len(pk.split_items("train"))  # every view a support sample
    pk.head.alpha.copy_(proker_fit(pk.head.support, torch.zeros(pk.head.support.shape[0], dtype=torch.long),
                                   pk.text_weights, 1.0, 0.0))
    assert torch.allclose(pk.model_inference(images), zs, atol=1e-4, rtol=1e-4)


def test_bad_grids_are_one_config_error(toy_root, tmp_path, tiny_path):
    with pytest.raises(ConfigError, match=r"TRAINER\.GDA\.ALPHAS"):
        trained(toy_root, tmp_path, tiny_path, "GDA", **{"TRAINER.GDA.ALPHAS": []})
    with pytest.raises(ConfigError, match=r"TRAINER\.PROKER\.MAX_KERNEL_GB"):
        trained(toy_root, tmp_path, tiny_path, "ProKeR", **{"TRAINER.PROKER.MAX_KERNEL_GB": 1e-9})
    with pytest.raises(ConfigError, match=r"TRAINER\.PROKER\.BETA must be \[start, end, count\]"):
        cfg = method_cfg(toy_root, tmp_path, tiny_path, "ProKeR", 2, "ensemble")
        cfg.TRAINER.PROKER.BETA = [1.0, 2.0]
        build_trainer(cfg).train()
