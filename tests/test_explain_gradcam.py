"""Smooth Grad-CAM++ (fsclip.explain.gradcam): one noise-free sample is the grad-cam package's
Grad-CAM++; the smoothing averages g, g^2 and g^3 (by hand); a model whose logit reads one region
only peaks there, for a conv map and for ViT tokens reshaped to the grid."""

from __future__ import annotations

import contextlib
import io

import numpy as np
import pytest
import torch
import torch.nn as nn
from conftest import make_toy_tree, method_cfg

import fsclip.trainers  # noqa: F401
from fsclip.backend import build_trainer
from fsclip.clip.tiny import build_tiny_clip, save_tiny_clip
from fsclip.errors import ConfigError
from fsclip.explain.gradcam import (
    choose_targets, default_layer, gradcam_pp_from_moments, resolve_layer, smooth_gradcam_pp, token_grid,
)

IMAGES = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="module", params=["RN", "ViT"])
def zero_shot(request, tmp_path_factory):
    root = tmp_path_factory.mktemp(f"gradcam_{request.param}")
    make_toy_tree(str(root))
    weights = save_tiny_clip(build_tiny_clip(request.param, image_resolution=64), str(root / "tiny.pt"))
    cfg = method_cfg(str(root), root, weights, "ZeroshotCLIP", 1, "single")
    with contextlib.redirect_stdout(io.StringIO()):
        t = build_trainer(cfg)
    t.set_model_mode("eval")
    return t


class Logits(nn.Module):
    """A trainer's image_logits as the nn.Module the grad-cam package wants (the input is made to
    require gradients: CLIP's weights are frozen)."""

    def __init__(self, trainer):
        super().__init__()
        self.trainer, self.clip = trainer, trainer.clip_model

    def forward(self, x):
        return self.trainer.image_logits(x.clone().requires_grad_(True))


def test_one_sample_without_noise_is_the_packages_grad_cam_pp(zero_shot):
    from pytorch_grad_cam import GradCAMPlusPlus
    from pytorch_grad_cam.utils.image import scale_cam_image
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    visual = zero_shot.clip_model.visual
    layer = resolve_layer(visual, default_layer(visual))
    targets = [1, 2]
    ours = smooth_gradcam_pp(zero_shot.image_logits, layer, IMAGES, targets, samples=1, noise=0.0,
                             reshape=token_grid(visual), eps=1e-6)  # the package's 1e-6 in alpha's denominator
    assert ours.shape == ((2, 4, 4) if hasattr(visual, "transformer") else (2, 2, 2))  # patch grid / layer4 map
    with GradCAMPlusPlus(Logits(zero_shot), [layer], reshape_transform=token_grid(visual)) as cam:
        package = cam(IMAGES, [ClassifierOutputTarget(c) for c in targets])  # ReLU'd, min-max scaled, resized
    assert np.abs(package).max() > 0
    # the package min-max scales, resizes to the input and min-max scales again (one target layer)
    np.testing.assert_allclose(scale_cam_image(scale_cam_image(ours.numpy(), (64, 64))), package, atol=1e-4)
    exact = smooth_gradcam_pp(zero_shot.image_logits, layer, IMAGES, targets, samples=1, noise=0.0,
                              reshape=token_grid(visual))  # the formula itself differs only where g^2 < 1e-6
    assert np.corrcoef(exact.flatten().numpy(), ours.flatten().numpy())[0, 1] > 0.95


def test_smoothing_averages_the_gradient_powers_by_hand():
    """samples=3 with noise: A from the clean image, the means of g, g^2, g^3 over the three noisy
    copies (drawn from the same generator) in the Grad-CAM++ formulas, computed here by hand."""
    torch.manual_seed(0)
    conv = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.Tanh())
    head = nn.Linear(4 * 8 * 8, 3)
    forward = lambda x: head(torch.sigmoid(conv(x)).flatten(1) ** 2)  # noqa: E731 (non-linear after the layer)
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    targets = torch.tensor([0, 2])
    got = smooth_gradcam_pp(forward, conv, x, targets, samples=3, noise=0.2, generator=torch.Generator().manual_seed(5))
    gen = torch.Generator().manual_seed(5)
    span = (x.flatten(1).amax(1) - x.flatten(1).amin(1)).view(-1, 1, 1, 1)
    grads = []
    for _ in range(3):
        xn = (x + torch.randn(x.shape, generator=gen) * 0.2 * span).requires_grad_(True)
        a = conv(xn)
        score = head(torch.sigmoid(a).flatten(1) ** 2)[torch.arange(2), targets].sum()
        grads.append(torch.autograd.grad(score, a)[0])
    g = torch.stack(grads)  # [3, N, C, h, w]
    a = conv(x).detach()
    d1, d2, d3 = g.mean(0), (g ** 2).mean(0), (g ** 3).mean(0)
    alpha = d2 / (2 * d2 + a.sum(dim=(2, 3), keepdim=True) * d3)
    w = (alpha * d1.clamp(min=0)).sum(dim=(2, 3))  # [N, C]
    expected = torch.relu(torch.einsum("nc,nchw->nhw", w, a))
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-6)
    # the powers are averaged, not the gradient: using mean(g)^2, mean(g)^3 gives another map
    assert not torch.allclose(gradcam_pp_from_moments(a, d1, d1 ** 2, d1 ** 3), expected, rtol=1e-3)


REGION = (slice(0, 2), slice(3, 6))  # rows 0-1, columns 3-5 of an 8 x 8 grid: off-centre, not square


def region_mask(h=8, w=8):
    m = torch.zeros(h, w)
    m[REGION] = 1.0
    return m


class ConvReadsOneRegion(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU())
        self.gate = nn.Identity()  # the target layer: features masked to the region
        self.head = nn.Linear(6, 4)

    def forward(self, x):
        a = self.gate(self.features(x) * region_mask())
        return self.head(a.sum(dim=(2, 3)))


class TokensReadOneRegion(nn.Module):
    """ViT-shaped: sequence-first tokens [1 + 64, B, width] (class token first), patch tokens
    outside the region zeroed; the logit reads the patch tokens."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Conv2d(3, 5, 1)
        self.positional_embedding = torch.zeros(65, 5)  # token_grid reads the grid from it
        self.block = nn.Identity()
        self.head = nn.Linear(5, 4)

    def forward(self, x):
        patches = torch.relu(self.embed(x)) * region_mask()  # [B, 5, 8, 8]
        tokens = patches.flatten(2).permute(2, 0, 1)  # [64, B, 5], row-major
        tokens = self.block(torch.cat([torch.ones_like(tokens[:1]) * 9.0, tokens]))  # a loud class token
        return self.head(tokens[1:].sum(dim=0))


@pytest.mark.parametrize("kind", ["conv", "tokens"])
def test_a_logit_that_reads_one_region_peaks_there(kind):
    torch.manual_seed(0)
    model = ConvReadsOneRegion() if kind == "conv" else TokensReadOneRegion()
    layer = model.gate if kind == "conv" else model.block
    x = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(3))
    logits = model(x)
    cls = [int(torch.argmax(model.head.weight.sum(dim=1)))] * 2  # a class whose logit grows with the features
    cam = smooth_gradcam_pp(model, layer, x, cls, samples=4, noise=0.1, reshape=token_grid(model),
                            generator=torch.Generator().manual_seed(0))
    assert logits.shape == (2, 4) and cam.shape == (2, 8, 8)
    inside = region_mask().bool()
    for m in cam:
        assert m.max() > 0
        assert m[~inside].abs().max() == 0  # nothing outside the region
        r, c = divmod(int(m.argmax()), 8)
        assert inside[r, c]


def test_targets_and_layers_are_checked(zero_shot):
    logits = torch.tensor([[0.1, 2.0, 0.3], [1.0, 0.0, 0.0]])
    names = list(zero_shot.dm.dataset.classnames)
    assert choose_targets("pred", logits, None, names) == [1, 0]
    assert choose_targets("true", logits, [2, 2], names) == [2, 2]
    assert choose_targets(names[2], logits, None, names) == [2, 2]
    with pytest.raises(ConfigError, match="needs the images' classes"):
        choose_targets("true", logits, None, names)
    with pytest.raises(ConfigError, match="is not a class of this dataset"):
        choose_targets("no such class", logits, None, names)
    with pytest.raises(ConfigError, match="is not a module of this image encoder"):
        resolve_layer(zero_shot.clip_model.visual, "layer9")
    with pytest.raises(ConfigError, match="is not run by this model"):  # a module the forward never calls
        smooth_gradcam_pp(zero_shot.image_logits, nn.Identity(), IMAGES, [0, 0], samples=1, noise=0.0)
