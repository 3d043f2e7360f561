"""CLIP-Adapter, linear probe, Cross-Modal, WiSE-FT, LP++: equations against hand computations,
the zero-shot endpoints, the linear probe's C search against scikit-learn, cached == uncached."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from conftest import method_cfg, set_opts, zero_shot_logits

import fsclip.datasets  # noqa: F401
import fsclip.trainers  # noqa: F401
from fsclip.adapt.heads import trunk_forward
from fsclip.adapt.linear import LinearHead, ViewSampler, logistic_regression, wise_ft_weights
from fsclip.adapt.prompts import prompt_features
from fsclip.backend import build_trainer
from fsclip.clip.tiny import build_tiny_clip, save_tiny_clip
from fsclip.trainers.clip_adapter import VisualAdapter
from fsclip.trainers.linear_probe import coop_c_search
from fsclip.trainers.lppp import BlockDescent, LPPPHead, init_alpha, init_prototypes, step_sizes
from fsclip.trainers.wiseft import choose_alpha

TRAINERS = ["CLIPAdapter", "LinearProbe", "CrossModal", "WiSEFT", "LPPP"]


@pytest.fixture(scope="module", params=["RN", "ViT"])
def tiny_path(request, tmp_path_factory):
    d = tmp_path_factory.mktemp(f"tiny_{request.param}")
    return save_tiny_clip(build_tiny_clip(request.param, image_resolution=64), str(d / "tiny.pt"))


def make_cfg(toy_root, tmp_path, weights, trainer, **opts):
    cfg = method_cfg(toy_root, tmp_path, weights, trainer, 2, "ensemble")
    for node in (cfg.TRAINER.CROSSMODAL, cfg.TRAINER.WISEFT):
        node.ITERS, node.EVAL_EVERY, node.WARMUP_ITERS = 12, 4, 2
        node.LRS, node.WDS, node.BATCH_SIZES = [1e-2], [0.0], [4]
    cfg.TRAINER.CLIP_ADAPTER.EPOCHS = 3
    cfg.TRAINER.CLIP_ADAPTER.LRS = [1e-2]
    cfg.TRAINER.LINEAR_PROBE.SEARCH_STEPS = 2
    cfg.TRAINER.LPPP.EPOCHS = 12
    return set_opts(cfg, **opts)


def first_images(trainer):
    return next(iter(trainer.test_loader))["img"]


# ----------------------------------------------------------------------------- CLIP-Adapter
def test_clip_adapter_equations_by_hand():
    torch.manual_seed(0)
    adapter = VisualAdapter(8, reduction=4)
    w1, w2 = adapter.fc[0].weight, adapter.fc[2].weight  # [2, 8], [8, 2]
    f = torch.randn(3, 8)
    ratio = 0.3
    by_hand = torch.zeros(3, 8)
    for b in range(3):
        hidden = [max(0.0, float(sum(w1[j, i] * f[b, i] for i in range(8)).detach())) for j in range(2)]
        for i in range(8):
            a = max(0.0, float(sum(w2[i, j] * hidden[j] for j in range(2)).detach()))
            by_hand[b, i] = ratio * a + (1 - ratio) * f[b, i]
    assert torch.allclose(adapter.blend(f, ratio), by_hand, atol=1e-5)
    assert all(m.bias is None for m in (adapter.fc[0], adapter.fc[2]))


def test_clip_adapter_with_ratio_zero_equals_zero_shot(toy_root, tmp_path, tiny_path):
    cfg = make_cfg(toy_root, tmp_path, tiny_path, "CLIPAdapter", **{"TRAINER.CLIP_ADAPTER.RATIO": 0.0})
    trainer = build_trainer(cfg)
    with torch.no_grad():
        for p in trainer.adapter.parameters():
            p.add_(torch.randn_like(p))  # any adapter: ratio 0 ignores it
    images = first_images(trainer)
    assert torch.allclose(trainer.model_inference(images), zero_shot_logits(trainer, images, "ensemble"), atol=1e-4, rtol=1e-4)


# ----------------------------------------------------------------------------- linear probe
def test_logistic_regression_solves_sklearns_objective():
    """First-order optimality of C * sum_i CE + 0.5 ||W||^2 (bias unpenalised), by hand."""
    torch.manual_seed(0)
    x, y = torch.randn(30, 5), torch.arange(30) % 3
    c = 0.7
    w, b = logistic_regression(x, y, 3, c, tol=1e-10)
    p = torch.softmax(x.double() @ w.double().t() + b.double(), dim=1)
    residual = p - F.one_hot(y, 3).double()  # [N, K]
    assert torch.allclose(c * residual.t() @ x.double() + w.double(), torch.zeros(3, 5, dtype=torch.float64), atol=1e-6)
    assert torch.allclose(residual.sum(0), torch.zeros(3, dtype=torch.float64), atol=1e-6)


def sklearn_coop_search(x, y, vx, vy, grid, steps):
    """CoOp's lpclip search, written against scikit-learn (the independent implementation)."""
    import numpy as np
    from sklearn.linear_model import LogisticRegression

    def fit(c):
        clf = LogisticRegression(C=c, max_iter=1000, tol=1e-8).fit(x, y)  # lbfgs, L2, multinomial
        return clf, float(np.mean(clf.predict(vx) == vy))

    accs = [fit(c)[1] for c in grid]
    peak = grid[int(np.argmax(accs))]
    lo, hi = np.log10(0.1 * peak), np.log10(10 * peak)
    c_final, clf_final = peak, fit(peak)[0]
    for _ in range(steps):
        c_left, c_right = 10 ** lo, 10 ** hi
        (clf_left, acc_left), (clf_right, acc_right) = fit(c_left), fit(c_right)
        if acc_left < acc_right:
            c_final, clf_final, lo = c_right, clf_right, 0.5 * (lo + hi)
        else:
            c_final, clf_final, hi = c_left, clf_left, 0.5 * (lo + hi)
    return c_final, clf_final


@pytest.mark.parametrize("seed", [1, 2])
def test_linear_probe_search_matches_sklearn_on_fixed_features(seed):
    """Overlapping Gaussian classes: val accuracy varies with C, so the search really moves."""
    pytest.importorskip("sklearn")
    gen = torch.Generator().manual_seed(seed)
    k, d = 5, 8
    centres = 0.8 * torch.randn(k, d, generator=gen)

    def draw(n_per_class):
        y = torch.arange(k).repeat_interleave(n_per_class)
        return centres[y] + torch.randn(len(y), d, generator=gen), y

    x, y = draw(8)
    vx, vy = draw(8)
    tx, _ = draw(40)
    grid = [1e6, 1e4, 1e2, 1.0, 1e-2, 1e-4, 1e-6]

    def run(c):
        from fsclip.adapt.search import RunResult
        w, b = logistic_regression(x, y, k, c, tol=1e-8)
        return RunResult({"C": c}, ((vx @ w.t() + b).argmax(1) == vy).float().mean().item() * 100, 0,
                         {"weight": w, "bias": b})

    ours = coop_c_search(run, grid, 8, log=lambda s: None)
    c_ref, clf = sklearn_coop_search(x.numpy(), y.numpy(), vx.numpy(), vy.numpy(), grid, 8)
    assert math.isclose(ours.params["C"], c_ref, rel_tol=1e-9), (ours.params["C"], c_ref)
    assert ours.params["C"] not in grid  # chosen by the bisection steps, not the coarse pass
    pred = (tx @ ours.state["weight"].t() + ours.state["bias"]).argmax(1)
    assert (pred.numpy() == clf.predict(tx.numpy())).all()


def test_linear_probe_keeps_the_last_step_as_coop():
    """The search follows CoOp's steps exactly: scores by C, the model kept at step 8."""
    from fsclip.adapt.search import RunResult
    calls = []

    def run(c):
        calls.append(c)
        return RunResult({"C": c}, 100 - abs(math.log10(c) - 0.3) * 10, 0, {})

    best = coop_c_search(run, [1e6, 1e4, 1e2, 1.0, 1e-2, 1e-4, 1e-6], 8, log=lambda s: None)
    # coarse peak 1 -> [0.1, 10]; each step halves the log interval towards the better end
    lo, hi = -1.0, 1.0
    for _ in range(8):
        left, right = 100 - abs(lo - 0.3) * 10, 100 - abs(hi - 0.3) * 10
        keep = 10 ** hi if left < right else 10 ** lo
        lo, hi = ((lo + hi) / 2, hi) if left < right else (lo, (lo + hi) / 2)
    assert best.params["C"] == pytest.approx(keep)


# ----------------------------------------------------------------------------- Cross-Modal / WiSE-FT
def test_wise_ft_weights_by_hand():
    w_ft = torch.tensor([[1.0, 2.0], [0.0, -1.0]])
    w_zs = torch.tensor([[3.0, 4.0], [0.0, 2.0]])
    expected = torch.tensor([[0.25 * 1 + 0.75 * 0.6, 0.25 * 2 + 0.75 * 0.8], [0.0, 0.25 * -1 + 0.75 * 1.0]])
    assert torch.allclose(wise_ft_weights(w_ft, w_zs, 0.25), expected)
    head = LinearHead(F.normalize(w_zs, dim=-1), scale=10.0)
    head.weight.data.copy_(w_ft)
    x = torch.tensor([[3.0, 4.0]])
    assert torch.allclose(head(x, alpha=0.25), 10.0 * torch.tensor([[0.6, 0.8]]) @ expected.t())


def test_prompt_features_are_every_prompt_of_every_class(toy_root, tmp_path, tiny_path):
    trainer = build_trainer(make_cfg(toy_root, tmp_path, tiny_path, "CrossModal"))
    feats, labels = prompt_features(trainer.clip_model, "ensemble", "ToyImages", trainer.classnames)
    assert feats.shape[0] == 2 * 3 and labels.tolist() == [0, 0, 1, 1, 2, 2]  # 2 templates x 3 classes
    means = F.normalize(torch.stack([F.normalize(feats[labels == c], dim=-1).mean(0) for c in range(3)]), dim=-1)
    assert torch.allclose(means, trainer.text_weights, atol=1e-5)


@pytest.mark.parametrize("trainer_name", ["CrossModal", "WiSEFT"])
def test_linear_head_starts_as_zero_shot_and_alpha_gives_both_endpoints(toy_root, tmp_path, tiny_path, trainer_name):
    trainer = build_trainer(make_cfg(toy_root, tmp_path, tiny_path, trainer_name))
    images = first_images(trainer)
    assert torch.equal(trainer.head.weight, trainer.text_weights)
    zs = zero_shot_logits(trainer, images, "ensemble")
    assert torch.allclose(trainer.model_inference(images), zs, atol=1e-4, rtol=1e-4)
    with torch.no_grad():
        trainer.head.weight.add_(0.5 * torch.randn_like(trainer.head.weight))  # any fine-tuned head
    f = trainer.head_o(trunk_forward(trainer.visual, images))
    fine_tuned = trainer.logit_scale * F.normalize(f, dim=-1) @ trainer.head.weight.t()
    assert not torch.allclose(fine_tuned, zs, atol=1e-2)
    for alpha, expected in ((0.0, zs), (1.0, fine_tuned)):
        assert torch.allclose(trainer.head(f, alpha=alpha), expected, atol=1e-4, rtol=1e-4)
        if trainer_name == "CrossModal":  # WISE_FT_ALPHA is read at evaluation
            trainer.cfg.defrost()
            trainer.cfg.TRAINER.CROSSMODAL.WISE_FT_ALPHA = alpha
        else:  # WiSEFT evaluates with the alpha it chose (saved with the head)
            trainer.head.alpha.fill_(alpha)
        assert torch.allclose(trainer.model_inference(images), expected, atol=1e-4, rtol=1e-4)


def test_wiseft_alpha_choice_and_ties():
    accs = {0.0: 50.0, 0.3: 70.0, 0.4: 80.0, 0.7: 80.0, 1.0: 60.0}
    assert choose_alpha(list(accs), accs.get) == (0.4, 80.0)  # tie 0.4 / 0.7: nearest 0.5
    assert choose_alpha([0.0, 1.0], {0.0: 10.0, 1.0: 20.0}.get) == (1.0, 20.0)


def test_wiseft_fixed_alpha_zero_is_zero_shot(toy_root, tmp_path, tiny_path):
    trainer = build_trainer(make_cfg(toy_root, tmp_path, tiny_path, "WiSEFT", **{"TRAINER.WISEFT.ALPHA": 0.0}))
    trainer.train()
    images = first_images(trainer)
    assert float(trainer.head.alpha) == 0.0
    assert torch.allclose(trainer.model_inference(images), zero_shot_logits(trainer, images, "ensemble"), atol=1e-4, rtol=1e-4)


def test_cross_modal_batches_are_half_text(toy_root, tmp_path, tiny_path, monkeypatch):
    import fsclip.adapt.linear as linear

    seen = []
    real = linear.fit_minibatch

    def spy(module, logits_fn, samplers, *args, **kwargs):
        seen.append([s.batch_size for s in samplers])
        return real(module, logits_fn, samplers, *args, **kwargs)

    monkeypatch.setattr(linear, "fit_minibatch", spy)
    build_trainer(make_cfg(toy_root, tmp_path, tiny_path, "CrossModal", **{"TRAINER.CROSSMODAL.BATCH_SIZES": [6]})).fit()
    build_trainer(make_cfg(toy_root, tmp_path / "w", tiny_path, "WiSEFT", **{"TRAINER.WISEFT.BATCH_SIZES": [6]})).fit()
    assert seen == [[3, 3], [6]]


def test_view_sampler_sees_every_sample_once_per_pass():
    feats = torch.arange(10.0).reshape(5, 1, 2).expand(5, 3, 2).clone()  # 5 samples x 3 views
    feats[:, :, 1] += torch.arange(3.0)  # the view index in the second coordinate
    sampler = ViewSampler(feats, torch.arange(5), 2, torch.Generator().manual_seed(0))
    drawn = torch.cat([sampler.next()[1] for _ in range(5)])  # 10 samples = two passes
    assert sorted(drawn.tolist()) == sorted(2 * list(range(5)))
    x, y = sampler.next()
    assert x.shape == (2, 2) and torch.equal(x[:, 0], 2.0 * y.float())


# ----------------------------------------------------------------------------- LP++
def test_lppp_initialisation_and_step_sizes_by_hand():
    torch.manual_seed(0)
    f = torch.randn(6, 4)
    y = torch.tensor([0, 0, 1, 1, 2, 2])
    t = torch.randn(3, 4)
    fn, tn = F.normalize(f, dim=-1), F.normalize(t, dim=-1)
    protos = torch.stack([fn[2 * k] + fn[2 * k + 1] for k in range(3)])  # shots x class mean
    assert torch.allclose(init_prototypes(f, y, 3), protos, atol=1e-6)
    assert torch.allclose(init_prototypes(f, y, 3, views=2), protos / 2, atol=1e-6)
    own = [float(fn[i] @ tn[y[i]]) for i in range(6)]
    assert init_alpha(f, y, t) == pytest.approx(250 * sum(own) / 6, rel=1e-5)
    gram = sum(torch.outer(fn[i].double(), fn[i].double()) for i in range(6))
    lam = max(torch.linalg.eigvalsh(gram).tolist())
    s2 = max(sum(float(fn[i] @ tn[k]) ** 2 for i in range(6)) for k in range(3))
    lr_w, lr_a = step_sizes(f, t)
    assert lr_w == pytest.approx(4 * 6 / lam, rel=1e-6) and lr_a == pytest.approx(6 / (4 * s2), rel=1e-6)


def test_lppp_logits_by_hand():
    torch.manual_seed(1)
    t = torch.randn(3, 4)
    head = LPPPHead(t)
    with torch.no_grad():
        head.weight.normal_()
        head.alpha.copy_(torch.tensor([0.5, 2.0, -1.0]))
        head.bias.copy_(torch.tensor([0.1, 0.0, -0.2]))
    f = torch.randn(2, 4)
    fn, tn = F.normalize(f, dim=-1), F.normalize(t, dim=-1)
    by_hand = torch.tensor([[float(fn[i] @ (head.weight[k] + head.alpha[k] * tn[k]).detach()) + float(head.bias[k])
                             for k in range(3)] for i in range(2)])
    assert torch.allclose(head(f), by_hand, atol=1e-5)


@pytest.mark.parametrize("mode", ["current", "accumulated"])
def test_lppp_block_steps(mode):
    """W steps every call; alpha every 2nd call, with the gradient at the new W (paper) or the
    sum of its gradients since the start (code)."""
    torch.manual_seed(2)
    f, y = torch.randn(5, 3), torch.tensor([0, 1, 2, 0, 1])
    head = LPPPHead(torch.randn(3, 3))
    head.bias.requires_grad_(False)

    def loss():
        return F.cross_entropy(head(f), y)

    opt = BlockDescent([head.weight], head.alpha, 0.5, 0.3, 0.0, 2, mode, loss)
    w, a, grads_a = head.weight.detach().clone(), head.alpha.detach().clone(), []
    for call in (1, 2):
        opt.zero_grad(set_to_none=True)
        loss().backward()
        grads_a.append(head.alpha.grad.clone())
        w = w - 0.5 * head.weight.grad
        opt.step()
        assert torch.allclose(head.weight, w, atol=1e-6)
    if mode == "accumulated":
        a = a - 0.3 * (grads_a[0] + grads_a[1])
    else:
        w_leaf = w.clone().requires_grad_(False)
        a_leaf = a.clone().requires_grad_(True)
        fn = F.normalize(f, dim=-1)
        logits = fn @ w_leaf.t() + a_leaf * (fn @ head.text.t())
        a = a - 0.3 * torch.autograd.grad(F.cross_entropy(logits, y), a_leaf)[0]
    assert torch.allclose(head.alpha, a, atol=1e-6)


# ----------------------------------------------------------------------------- every trainer
@pytest.mark.parametrize("trainer_name", TRAINERS)
def test_cached_and_uncached_paths_give_the_same_logits(toy_root, tmp_path, tiny_path, trainer_name):
    cfg = make_cfg(toy_root, tmp_path, tiny_path, trainer_name, **{"TRAINER.FEATURES.DTYPE": "fp32"})
    trainer = build_trainer(cfg)
    trainer.train()
    images = first_images(trainer)
    n = images.shape[0]
    cached = trainer.logits_from_dense(trainer.features("test")[:n, 0])
    uncached = trainer.model_inference(images)
    assert torch.allclose(cached, uncached, atol=1e-4, rtol=1e-4)
    # eval-only: a fresh trainer reloads every learned or chosen value from the run folder
    fresh = build_trainer(cfg)
    fresh.load_model(cfg.OUTPUT_DIR)
    fresh._test_allowed = True
    assert torch.allclose(fresh.logits_from_dense(fresh.features("test")[:n, 0]), cached, atol=1e-5)


def test_train_test_view_features_are_the_test_transform_of_the_train_images(toy_root, tmp_path, tiny_path):
    """CoOp's linear-probe features: one test-transform view per training image, in its own
    cache entries (the augmented views stay as they are)."""
    from fsclip.engine.data.manager import read_image

    cfg = make_cfg(toy_root, tmp_path, tiny_path, "LinearProbe", **{"TRAINER.FEATURES.DTYPE": "fp32"})
    trainer = build_trainer(cfg)
    plain = trainer.features("train", augmented=False)
    items = trainer.split_items("train")
    assert plain.shape[:2] == (len(items), 1) and trainer.features("train").shape[1] == 2
    images = torch.stack([trainer.tfm_test(read_image(d.impath)) for d in items])
    assert torch.allclose(plain[:, 0], trunk_forward(trainer.visual, images), atol=1e-4)
    assert torch.allclose(trainer.global_features("train", augmented=False), trainer.head_o(plain[:, 0]), atol=1e-4)
    with pytest.raises(ValueError):
        trainer.features("val", augmented=True)


def test_lppp_trainer_starts_from_its_initialisation(toy_root, tmp_path, tiny_path):
    """With no steps the fitted head is the data-driven initialisation of the first cached view."""
    trainer = build_trainer(make_cfg(toy_root, tmp_path, tiny_path, "LPPP", **{"TRAINER.LPPP.EPOCHS": 0}))
    trainer.fit()
    f, y = trainer.global_features("train")[:, 0], trainer.labels("train")
    assert torch.allclose(trainer.head.weight, init_prototypes(f, y, 3), atol=1e-5)
    assert torch.allclose(trainer.head.alpha, torch.full((3,), init_alpha(f, y, trainer.text_weights)), rtol=1e-5)
    assert torch.equal(trainer.head.bias, torch.zeros(3))


# ----------------------------------------------------------------------------- the official loops' rules
def _scripted_run(accs, iters, eval_every, **rules):
    """train_with_early_stopping on a constant-loss module with scripted val accuracies."""
    from fsclip.adapt.search import train_with_early_stopping
    module = torch.nn.Linear(2, 1)
    opt = torch.optim.SGD(module.parameters(), lr=0.1)
    acc_iter = iter(accs)
    return train_with_early_stopping(module, lambda i: module(torch.ones(1, 2)).sum() * 0 + 1.0,
                                     lambda: next(acc_iter), opt, None, iters, eval_every, log=lambda _: None, **rules)


def test_early_stopping_rules_of_the_official_loops():
    """Step 0 scored and ties to the earlier (fsclip) vs 1..N and ties to the later (LP++'s code);
    validation after steps 1, 1 + k, 1 + 2k, ... only (the cross-modal code's i % k after the step)."""
    accs = [60.0, 50.0, 60.0, 60.0, 40.0]  # step 0 (initial weights), then steps 1..4
    assert _scripted_run(accs, 4, 1).step == 0
    code = _scripted_run(accs[1:], 4, 1, score_initial=False, ties="last")
    assert (code.step, code.val_acc) == (3, 60.0)  # the official loop's epoch index 2
    assert [s for s, _ in _scripted_run([1.0] * 4, 10, 4).history] == [0, 4, 8, 10]
    shifted = _scripted_run([1.0, 3.0, 2.0], 10, 4, score_initial=False, eval_offset=1)
    assert [s for s, _ in shifted.history] == [1, 5, 9] and shifted.step == 5


def test_lppp_epoch_choice_code_follows_the_official_loop(toy_root, tmp_path, tiny_path, monkeypatch):
    import fsclip.trainers.lppp as lppp
    picked, real = {}, lppp.train_with_early_stopping
    for choice in ("fsclip", "code"):
        trainer = build_trainer(make_cfg(toy_root, tmp_path / choice, tiny_path, "LPPP", **{
            "TRAINER.LPPP.EPOCHS": 4, "TRAINER.LPPP.EPOCH_CHOICE": choice}))
        accs = iter([60.0, 50.0, 60.0, 60.0, 40.0] if choice == "fsclip" else [50.0, 60.0, 60.0, 40.0])
        monkeypatch.setattr(lppp, "accuracy", lambda logits, labels: next(accs))
        monkeypatch.setattr(lppp, "train_with_early_stopping",
                            lambda *a, **k: picked.setdefault(choice, real(*a, **k)))
        trainer.fit()
    assert picked["fsclip"].step == 0 and picked["code"].step == 3
    with pytest.raises(Exception, match="TRAINER.LPPP.EPOCH_CHOICE"):
        build_trainer(make_cfg(toy_root, tmp_path / "bad", tiny_path, "LPPP",
                               **{"TRAINER.LPPP.EPOCH_CHOICE": "paper"})).fit()


def _linear_sweep(rules, views, text, sizes, iters=12, eval_every=4):
    from yacs.config import CfgNode as CN

    from fsclip.adapt.linear import add_linear_head_cfg, sweep_linear_head
    node = add_linear_head_cfg(CN())
    node.ITERS, node.EVAL_EVERY, node.WARMUP_ITERS = iters, eval_every, 0
    node.LRS, node.WDS, node.BATCH_SIZES, node.RULES = [1e-2], [0.0], sizes, rules
    labels = torch.arange(views.shape[0]) % 2
    zs = F.normalize(torch.randn(2, views.shape[-1], generator=torch.Generator().manual_seed(1)), dim=-1)
    lines = []
    best = sweep_linear_head(zs, 50.0, views, labels, views[:, 0], labels, node, text=text, log=lines.append,
                             node_name="TRAINER.CROSSMODAL")
    ran = sorted(int(line.split("batch_size=")[1].split(":")[0]) for line in lines if line.startswith("* search:"))
    return best, ran, lines


def test_cross_modal_code_rules_validate_after_step_one_and_count_views():
    gen = torch.Generator().manual_seed(0)
    views = torch.randn(4, 3, 16, generator=gen)  # 4 images x 3 views = 12 rows
    text = (torch.randn(10, 16, generator=gen), torch.arange(10) % 2)  # 10 text samples
    best, ran, _ = _linear_sweep("fsclip", views, text, [8, 12, 20])
    assert ran == [8]  # image part <= 4 images, text part <= 10
    assert [s for s, _ in best.history] == [0, 4, 8, 12]
    best, ran, _ = _linear_sweep("code", views, text, [8, 12, 20])
    assert ran == [8, 12]  # image part < 12 rows, text part < 10 (20's 10 text samples do not fit)
    assert [s for s, _ in best.history] == [1, 5, 9]


def test_cross_modal_code_rules_strict_batch_sizes_and_no_fallback():
    from fsclip.errors import ConfigError
    views = torch.randn(4, 1, 16, generator=torch.Generator().manual_seed(0))  # WiSE-FT: images only
    assert _linear_sweep("fsclip", views, None, [4, 2])[1] == [2, 4]
    assert _linear_sweep("code", views, None, [4, 2])[1] == [2]  # 4 rows: a batch of 4 is not < 4
    _, ran, lines = _linear_sweep("fsclip", views, None, [8])
    assert ran == [8] and any(line.startswith("Note: every batch size") for line in lines)
    with pytest.raises(ConfigError, match=r"TRAINER.CROSSMODAL.BATCH_SIZES \[8\]: none fits .* 4 training rows"):
        _linear_sweep("code", views, None, [8])


def test_logistic_regression_reports_whether_it_converged():
    gen = torch.Generator().manual_seed(0)
    x, y = 4 * torch.randn(10, 64, generator=gen), torch.arange(10)  # 1 shot: separable
    short, full = {}, {}
    logistic_regression(x, y, 10, 1e5, max_iter=3, report=short)
    logistic_regression(x, y, 10, 1.0, max_iter=1000, tol=1e-6, report=full)
    assert short == {"iterations": 3, "converged": False} and full["converged"] and full["iterations"] > 3


def test_linear_probe_notes_fits_that_stopped_at_max_iter(toy_root, tmp_path, tiny_path, capsys):
    trainer = build_trainer(make_cfg(toy_root, tmp_path, tiny_path, "LinearProbe", **{
        "TRAINER.LINEAR_PROBE.MAX_ITER": 1, "TRAINER.LINEAR_PROBE.TOL": 1e-12}))
    trainer.fit()
    note = [line for line in capsys.readouterr().out.splitlines() if line.startswith("Note: L-BFGS reached")]
    assert len(note) == 1 and "TRAINER.LINEAR_PROBE.MAX_ITER 1 before TOL 1e-12" in note[0] and "1e+06" in note[0]
