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


@pytest.mark.parametrize("kit_cfg,stage", [("micro_rn", "attnpool"), ("micro_vit", None)])
def test_safe_s_trained_visual_hook_puts_attnpool_f_in_the_encoder(kit_root, kit_cache, tmp_path, kit_cfg, stage):
    """SAFE's ``trained_visual``: the encoder with AttnPool_F (ViT: the fine-tuned last block); an
    untouched AttnPool_F gives CLIP's features, a changed one changes the pooled stage only, and
    CLIP's own encoder is left as it was."""
    import contextlib
    import io

    from kit_learning import kit_trainer

    with contextlib.redirect_stdout(io.StringIO()):
        t = kit_trainer("SAFE", "synth_shapes", kit_root, kit_cache, str(tmp_path), 1, kit_cfg, 1,
                        ["TRAINER.SAFE.ITERS", 1, "TRAINER.SAFE.EVAL_EVERY", 1, "TRAINER.SAFE.LRS", "[0.0]"])
    images = torch.randn(2, 3, *t.cfg.INPUT.SIZE)
    stages = default_stages(t.visual)
    stage = stage or stages[-1]  # ViT: the last block is the fine-tuned one
    before = dense_features(t.visual, images, stages)
    same = dense_features(t.trained_visual(), images, stages)
    for s in stages:
        torch.testing.assert_close(same[s], before[s], rtol=1e-4, atol=1e-4)
    with torch.no_grad():
        for p in t.head_f.parameters():
            p.add_(0.05 * torch.randn_like(p))
    moved = dense_features(t.trained_visual(), images, stages)
    assert not torch.allclose(moved[stage], before[stage], atol=1e-3)
    for s in stages[:-1] if stage == stages[-1] else [x for x in stages if x != "attnpool"]:
        torch.testing.assert_close(moved[s], before[s], rtol=1e-4, atol=1e-4)
    again = dense_features(t.visual, images, stages)  # CLIP's encoder is unchanged
    torch.testing.assert_close(again[stage], before[stage])
    t.visual.float()(images)  # and still runs as CLIP's encoder
