"""Dense correspondence (fsclip.explain.correspondence, SAFE Figs. 3 and 6). Issue #23."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fsclip.clip.loader import load_clip
from fsclip.explain.correspondence import default_stages, dense_features, match


@pytest.mark.parametrize("backbone", ["MicroRN", "MicroViT"])
def test_a_point_matched_against_its_own_image_lands_on_itself_at_the_last_stage(backbone):
    visual = load_clip(backbone, precision="fp32").visual
    torch.manual_seed(0)
    images = torch.randn(2, 3, 128, 128)
    stages = default_stages(visual)
    feats = dense_features(visual, images, stages)
    last = feats[stages[-1]][0]  # [C, h, w]
    h, w = last.shape[1:]
    for x, y in [(10.0, 20.0), (64.0, 64.0), (127.0, 3.0)]:
        sim, (tx, ty) = match(last, last, (x, y), (128, 128))
        assert sim.shape == (h, w) and sim.max() == pytest.approx(1.0, abs=1e-5)
        # the target is the centre of the source point's own cell
        assert int(tx * w / 128) == int(x * w / 128) and int(ty * h / 128) == int(y * h / 128)
        assert abs(tx - x) <= 128 / w / 2 + 1e-6 or int(x * w / 128) == w - 1
    # another image gives similarities below one: the match is not trivially perfect
    sim, _ = match(last, feats[stages[-1]][1], (64.0, 64.0), (128, 128))
    assert sim.max() < 0.999


def test_resnet_stages_are_the_residual_layers_and_the_pools_values():
    visual = load_clip("MicroRN", precision="fp32").visual
    images = torch.randn(1, 3, 128, 128)
    feats = dense_features(visual, images, ["layer1", "layer4", "attnpool"])
    with torch.no_grad():
        x = visual.avgpool(visual.relu3(visual.bn3(visual.conv3(visual.relu2(visual.bn2(visual.conv2(
            visual.relu1(visual.bn1(visual.conv1(images))))))))))
        l1 = visual.layer1(x)
        l4 = visual.layer4(visual.layer3(visual.layer2(l1)))
        pool = visual.attnpool
        tokens = l4.flatten(2).transpose(1, 2) + pool.positional_embedding[1:]
        v = pool.v_proj(tokens).transpose(1, 2).reshape(1, -1, *l4.shape[2:])
    assert torch.allclose(feats["layer1"], l1) and torch.allclose(feats["layer4"], l4)
    assert torch.allclose(feats["attnpool"], v, atol=1e-6)
    assert np.prod(feats["layer1"].shape[2:]) > np.prod(feats["layer4"].shape[2:])
