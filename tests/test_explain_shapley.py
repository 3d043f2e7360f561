"""Shapley values of image parts (fsclip.explain.shapley) and the parts they are taken over
(fsclip.explain.parts, the kit's PartImageNet-style annotations in fsclip.kit.parts). Issue #23."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

from fsclip.errors import DataError
from fsclip.explain.parts import read_parts
from fsclip.explain.shapley import all_coalitions, baseline_image, exact_shapley, image_game, sampled_shapley
from fsclip.kit import parts as kit_parts
from fsclip.kit import synth


def table_game(values):
    """A game given by its value per coalition bitmask."""
    table = torch.as_tensor(values, dtype=torch.float64)

    def value(coalitions):
        bits = (coalitions.long() << torch.arange(coalitions.shape[1])).sum(1)
        return table[bits]
    return value


def random_game(num_parts, seed=0):
    return table_game(torch.randn(2 ** num_parts, generator=torch.Generator().manual_seed(seed)))


@pytest.mark.parametrize("num_parts", [1, 3, 5, 8])
def test_exact_values_are_efficient(num_parts):
    phi, v = exact_shapley(random_game(num_parts, seed=num_parts), num_parts)
    assert abs(float(phi.sum()) - float(v[-1] - v[0])) < 1e-5


def test_exact_values_of_a_game_by_hand():
    # v({}) = 0, v({0}) = 1, v({1}) = 2, v({0, 1}) = 5: phi_0 = (1 - 0 + 5 - 2) / 2, phi_1 = (2 + 4) / 2
    phi, _ = exact_shapley(table_game([0.0, 1.0, 2.0, 5.0]), 2)
    assert phi.tolist() == pytest.approx([2.0, 3.0])


def test_a_dummy_part_gets_zero_and_symmetric_parts_equal_values():
    base = torch.randn(8, dtype=torch.float64, generator=torch.Generator().manual_seed(3))

    def value(coalitions):  # part 3 never matters; parts 0 and 1 enter only through their count
        c = coalitions.long()
        return base[c[:, 0] + c[:, 1]] * (1 + c[:, 2]) + base[4 + c[:, 2]]
    phi, _ = exact_shapley(value, 4)
    assert abs(float(phi[3])) < 1e-12
    assert float(phi[0]) == pytest.approx(float(phi[1]), abs=1e-12)
    assert abs(float(phi[0])) > 1e-3  # not trivially equal


def test_too_many_parts_for_exact_enumeration_is_refused():
    from fsclip.errors import ConfigError

    with pytest.raises(ConfigError, match="--samples"):
        exact_shapley(random_game(1), 9)


def test_sampling_converges_to_the_exact_values():
    game = random_game(5, seed=7)
    exact, _ = exact_shapley(game, 5)
    few, few_err = sampled_shapley(game, 5, samples=20, seed=1)
    many, many_err = sampled_shapley(game, 5, samples=4000, seed=1)
    assert float((many - exact).abs().max()) < 4 * float(many_err.max()) + 1e-9
    assert float((many - exact).abs().max()) < float((few - exact).abs().max())
    assert float(many_err.max()) < float(few_err.max()) / 5  # the error bar shrinks as 1 / sqrt(M)
    # every permutation's marginals sum to v(all) - v(none): the estimate is efficient too
    assert float(many.sum()) == pytest.approx(float(exact.sum()), abs=1e-9)


def test_image_game_equals_captums_shapley_values_on_a_tiny_model():
    from captum.attr import ShapleyValues

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(2),
                                torch.nn.Flatten(), torch.nn.Linear(16, 5)).double()
    x = torch.randn(3, 8, 8, dtype=torch.float64)
    groups = torch.zeros(8, 8, dtype=torch.long)
    groups[:4, 4:], groups[4:, :4], groups[4:, 4:] = 1, 2, 3
    groups[2:6, 2:6] = 4  # five parts of unequal sizes
    masks = torch.stack([groups == k for k in range(5)])
    target = 2
    b = baseline_image("mean", x)
    phi, _ = exact_shapley(image_game(model, x, b, masks, target), 5)

    def prob(inp):
        return model(inp).softmax(-1)
    ref = ShapleyValues(prob).attribute(x[None], baselines=b[None], target=target, feature_mask=groups[None, None])
    ref_parts = torch.stack([ref[0, 0][groups == k][0] for k in range(5)])
    assert torch.allclose(phi, ref_parts.double(), atol=1e-6), (phi, ref_parts)


def test_baselines():
    x = torch.rand(3, 32, 32)
    assert torch.equal(baseline_image("zero", x), torch.zeros_like(x))
    mean = baseline_image("mean", x)
    assert torch.allclose(mean[:, 5, 7], x.mean(dim=(1, 2)))
    blur = baseline_image("blur", x)
    assert blur.shape == x.shape and blur.std() < x.std() / 2  # smoother than the image


def test_all_coalitions_enumerates_bitmasks():
    c = all_coalitions(3)
    assert c.shape == (8, 3) and c[5].tolist() == [True, False, True]


# ----------------------------------------------------------------------------------- parts
def test_kit_part_annotations_read_back_with_pycocotools_and_keep_the_pixels(kit_root):
    root = kit_root
    name, spec = "SynthShapes", synth.DATASETS["SynthShapes"]
    folder = synth.ensure_dataset(root, name, verbose=False)
    before = {k: v for k, v in synth.tree_digest(folder).items() if not k.startswith("annotations")}
    path = kit_parts.ensure_part_annotations(root, name, "val")
    after = synth.tree_digest(folder)
    assert {k: v for k, v in after.items() if not k.startswith("annotations")} == before  # images, splits untouched
    with open(path) as f:
        data = json.load(f)
    assert [c["id"] for c in data["categories"]] == [0, 1, 2]  # 0-based, as PartImageNet
    assert len(data["images"]) == len(spec.classes) * spec.counts["val"]
    for label, index in [(0, 0), (3, 2), (9, 4)]:
        rel = f"{synth.folder_name(spec.classes[label])}/val_{index:04d}.png"
        img_path = f"{folder}/images/{rel}"
        parts = read_parts([path], [img_path], [(128, 128)])[0]
        ref = kit_parts.part_map(spec, "val", label, index, synth.DEFAULT_SEED)
        names = ["background"] + [c["name"] for c in data["categories"]]
        assert [names[k] for k in np.unique(ref)] == parts.names
        relabelled = np.zeros_like(ref)
        for k, v in enumerate(np.unique(ref)):
            relabelled[ref == v] = k
        assert np.array_equal(parts.label_map, relabelled)
        # the main object is where the class colour is: its pixels differ from the background's
        img = np.asarray(Image.open(img_path), dtype=np.float32)
        obj, bg = img[parts.label_map == 1].mean(0), img[parts.label_map == 0].mean(0)
        assert np.abs(obj - bg).max() > 10
    assert kit_parts.ensure_part_annotations(root, name, "val") == path  # cached: not written again


def test_coco_polygons_and_label_pngs_give_the_same_parts(tmp_path):
    img = tmp_path / "n01440764_1.JPEG"
    Image.new("RGB", (20, 10)).save(img, format="PNG")
    coco = {"images": [{"id": 7, "file_name": "n01440764_1.JPEG", "width": 20, "height": 10}],
            "categories": [{"id": 0, "name": "Fish Head", "supercategory": "Fish"},
                           {"id": 2, "name": "Fish Tail", "supercategory": "Fish"}],
            "annotations": [{"id": 1, "image_id": 7, "category_id": 2, "iscrowd": 0, "area": 1, "bbox": [0, 0, 1, 1],
                             "segmentation": [[10, 0, 20, 0, 20, 10, 10, 10]]},
                            {"id": 2, "image_id": 7, "category_id": 0, "iscrowd": 0, "area": 1, "bbox": [0, 0, 1, 1],
                             "segmentation": [[0, 0, 4, 0, 4, 4, 0, 4]]}]}
    (tmp_path / "a.json").write_text(json.dumps(coco))
    from_json = read_parts([str(tmp_path / "a.json")], [str(img)], [(10, 20)])[0]
    assert from_json.names == ["background", "Fish Head", "Fish Tail"]
    label = np.zeros((10, 20), np.uint8)
    label[:, 10:] = 9
    label[:4, :4] = 4
    Image.fromarray(label).save(tmp_path / "m.png")
    from_png = read_parts([str(tmp_path / "m.png")], [str(img)], [(10, 20)], ["head", "tail"])[0]
    assert from_png.names == ["background", "head", "tail"]
    assert (from_png.label_map == 2).sum() > 0 and (from_json.label_map == 1).sum() > 0
    # polygon rasterisation may differ from the PNG by the boundary pixels only
    assert (from_json.label_map != from_png.label_map).mean() < 0.15
    with pytest.raises(DataError, match="must have the size of the original image"):
        read_parts([str(tmp_path / "m.png")], [str(img)], [(12, 20)])
    with pytest.raises(DataError, match="size of the original image"):
        read_parts([str(tmp_path / "a.json")], [str(img)], [(10, 21)])
    with pytest.raises(DataError, match="no entry for image"):
        read_parts([str(tmp_path / "a.json")], [str(tmp_path / "other.png")], [(10, 20)])


def test_parts_aligned_to_the_input_grid_drop_parts_cropped_away():
    from fsclip.explain.parts import Parts

    m = np.zeros((10, 20), np.int64)
    m[:, :2] = 1  # cropped away by a centre crop to 10 x 10
    m[4:6, 9:11] = 2

    def align(a):
        return a[:, 5:15]
    p = Parts(m, ["background", "left edge", "middle"]).aligned(align)
    assert p.names == ["background", "middle"] and p.label_map.max() == 1
    assert math.isclose(p.masks().sum(), 100)
