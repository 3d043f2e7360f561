"""Few-shot sampling (Dassl's algorithm), JSON split cache, DataManager, transforms, images."""

from __future__ import annotations

import json
import os.path as osp
import random
from collections import defaultdict

import pytest
import torch

from fsclip.backend import BACKEND
from fsclip.engine.config import get_cfg_default
from fsclip.engine.data.base import Datum, DatasetBase, load_or_create_fewshot, sample_fewshot, subsample_classes
from fsclip.engine.data.manager import DataManager, ImageReadError, read_image
from fsclip.engine.data.transforms import build_transform


def _items(n_classes=5, per_class=12, shuffle_seed=0):
    items = [Datum(f"/d/c{c}/{i}.jpg", c, 0, f"class {c}") for c in range(n_classes) for i in range(per_class)]
    random.Random(shuffle_seed).shuffle(items)  # labels appear in a mixed order
    return items


def dassl_reference(data_source, num_shots, seed):
    """Dassl's generate_fewshot_dataset, written out: global random after random.seed(seed)."""
    random.seed(seed)
    tracker = defaultdict(list)
    for item in data_source:
        tracker[item.label].append(item)
    out = []
    for _, items in tracker.items():
        out.extend(random.sample(items, num_shots) if len(items) >= num_shots else items)
    return out


@pytest.mark.parametrize("shots,seed", [(1, 1), (4, 2), (16, 3)])
def test_sample_fewshot_equals_dassl_algorithm(shots, seed):
    data = _items()
    assert sample_fewshot(data, shots, random.Random(seed)) == dassl_reference(data, shots, seed)


def test_generate_fewshot_dataset_uses_global_random_like_dassl():
    data = _items()
    random.seed(7)
    got = DatasetBase(train_x=data).generate_fewshot_dataset(data, num_shots=2)
    assert got == dassl_reference(data, 2, 7)


def test_fewshot_cache_is_json_relative_and_reused(tmp_path):
    root = str(tmp_path / "images")
    train = [Datum(osp.join(root, f"c{c}", f"{i}.jpg"), c, 0, f"c{c}") for c in range(3) for i in range(6)]
    val = [Datum(osp.join(root, f"c{c}", f"v{i}.jpg"), c, 0, f"c{c}") for c in range(3) for i in range(6)]
    cache = str(tmp_path / "split_fewshot")
    tr, va = load_or_create_fewshot(train, val, 8, 1, cache, root)
    assert len(tr) == 18 and len(va) == 12  # fewer than 8 -> all; val min(8, 4) = 4
    with open(osp.join(cache, "shot_8-seed_1.json")) as f:
        data = json.load(f)
    assert data["train"][0][0].startswith("c") and not osp.isabs(data["train"][0][0])
    tr2, va2 = load_or_create_fewshot(train, val, 8, 1, cache, root)
    assert tr2 == tr and va2 == va
    # a stale cache (entries not in the split) is recreated, not trusted
    data["train"][0][0] = "elsewhere/x.jpg"
    with open(osp.join(cache, "shot_8-seed_1.json"), "w") as f:
        json.dump(data, f)
    tr3, _ = load_or_create_fewshot(train, val, 8, 1, cache, root)
    assert tr3 == tr


def test_fewshot_cache_picks_equal_coop_train_then_val_from_one_stream(tmp_path):
    """CoOp samples train then val from the global stream seeded once; the cache must agree."""
    root = str(tmp_path)
    train = [Datum(osp.join(root, f"t{c}_{i}.jpg"), c, 0, f"c{c}") for c in range(3) for i in range(10)]
    val = [Datum(osp.join(root, f"v{c}_{i}.jpg"), c, 0, f"c{c}") for c in range(3) for i in range(10)]
    random.seed(5)
    ds = DatasetBase(train_x=train)
    ref_train = ds.generate_fewshot_dataset(train, num_shots=8)
    ref_val = ds.generate_fewshot_dataset(val, num_shots=4)
    random.seed(999)  # the cache must not depend on the global state
    got_train, got_val = load_or_create_fewshot(train, val, 8, 5, str(tmp_path / "fs"), root)
    assert got_train == ref_train and got_val == ref_val


def test_subsample_classes_base_and_new():
    data = _items(5, 2)
    base, = subsample_classes(data, subsample="base")
    new, = subsample_classes(data, subsample="new")
    assert sorted({d.label for d in base}) == [0, 1, 2]  # ceil(5/2) base classes
    assert sorted({d.classname for d in new}) == ["class 3", "class 4"]
    assert sorted({d.label for d in new}) == [0, 1]
    with pytest.raises(ValueError, match="SUBSAMPLE_CLASSES"):
        subsample_classes(data, subsample="half")


@pytest.mark.skipif(BACKEND != "bundled", reason="the toy dataset is registered in Dassl's registry")
def test_data_manager_loaders_and_drop_last(toy_cfg, capsys):
    toy_cfg.DATASET.NUM_SHOTS = 2
    dm = DataManager(toy_cfg)
    assert len(dm.dataset.train_x) == 6 and len(dm.dataset.val) == 6
    assert dm.train_loader_x.drop_last  # 6 >= batch size 4
    assert not dm.test_loader.drop_last
    batch = next(iter(dm.test_loader))
    assert batch["img"].shape == (5, 3, 16, 16) and set(batch) >= {"img", "label", "impath", "index", "domain"}
    assert "# classes" in capsys.readouterr().out
    assert dm.lab2cname == {0: "red square", 1: "green circle", 2: "blue bar"}


@pytest.mark.skipif(BACKEND != "bundled", reason="the toy dataset is registered in Dassl's registry")
def test_k_transforms_returns_views(toy_cfg):
    toy_cfg.DATALOADER.K_TRANSFORMS = 3
    toy_cfg.INPUT.TRANSFORMS = ("random_flip", "normalize")
    dm = DataManager(toy_cfg)
    item = dm.train_loader_x.dataset[0]
    assert isinstance(item["img"], list) and len(item["img"]) == 3


def test_corrupt_and_missing_images_name_the_file(tmp_path):
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"\xff\xd8 not really a jpeg")
    with pytest.raises(ImageReadError, match="broken.jpg"):
        read_image(str(bad))
    with pytest.raises(ImageReadError, match="missing.png"):
        read_image(str(tmp_path / "missing.png"))


def _gradient_8bit():
    import numpy as np
    return np.arange(256, dtype=np.uint8).reshape(16, 16)  # [H, W], every 8-bit level once


@pytest.mark.parametrize("kind", ["png16", "pgm16", "float01", "float255"])
def test_high_bit_depth_images_scaled_to_8_bits(tmp_path, kind):
    """A 16-bit greyscale PNG (mode I;16), a 16-bit PGM (Pillow opens it as mode I) and float
    TIFFs (mode F) come back with their 8-bit levels, not clipped to white or black."""
    import numpy as np
    from PIL import Image

    levels = _gradient_8bit()
    path = tmp_path / {"png16": "g.png", "pgm16": "g.pgm"}.get(kind, "g.tif")
    if kind in ("png16", "pgm16"):
        Image.fromarray(levels.astype(np.uint16) * 257).save(path)  # 255 -> 65535
    else:
        scale = 1 / 255 if kind == "float01" else 1.0
        Image.fromarray(levels.astype(np.float32) * np.float32(scale)).save(path)
    with Image.open(path) as raw:
        assert raw.mode == {"png16": "I;16", "pgm16": "I"}.get(kind, "F")
    img = read_image(str(path))
    assert img.mode == "RGB"
    got = np.asarray(img)  # [H, W, 3]
    assert (got == levels[..., None]).all()


@pytest.mark.parametrize("values,mode", [((-1.0, 0.5), "F"), ((0.0, 300.0), "F"), ((0, 70000), "I")])
def test_unmappable_high_bit_depth_images_are_refused_by_name(tmp_path, values, mode):
    import numpy as np
    from PIL import Image

    dtype = np.float32 if mode == "F" else np.int32
    path = tmp_path / "odd.tif"
    Image.fromarray(np.array([values, values], dtype=dtype)).save(path)
    with pytest.raises(ImageReadError, match=f"odd.tif.*mode {mode}.*Convert it to an 8-bit image"):
        read_image(str(path))


def test_decompression_bomb_names_the_file_and_how_to_resize(tmp_path, monkeypatch):
    from PIL import Image

    path = tmp_path / "huge.png"
    Image.new("RGB", (64, 64)).save(path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # 4096 pixels > 2 x 100: a "bomb"
    with pytest.raises(ImageReadError, match=r"huge\.png is too large.*mogrify -resize") as err:
        read_image(str(path))
    assert "\n" not in str(err.value)


def test_16bit_png_reaches_the_model_as_its_8bit_twin(tmp_path):
    """Through the test transform and the trunk's view dataset (the feature cache's input), a
    16-bit PNG gives the same tensor as the 8-bit PNG it was made from."""
    import numpy as np
    from PIL import Image

    from fsclip.adapt.extract import ViewDataset

    levels = _gradient_8bit()
    Image.fromarray(levels).save(tmp_path / "g8.png")
    Image.fromarray(levels.astype(np.uint16) * 257).save(tmp_path / "g16.png")
    cfg = get_cfg_default()
    cfg.INPUT.SIZE = (16, 16)
    ds = ViewDataset([str(tmp_path / "g8.png"), str(tmp_path / "g16.png")], build_transform(cfg, is_train=False))
    eight, sixteen = ds[0], ds[1]  # [V, 3, H, W] each
    assert torch.equal(eight, sixteen) and eight.std() > 0


def test_image_error_in_a_dataloader_worker_keeps_its_one_line_message(tmp_path):
    from torch.utils.data import DataLoader

    from fsclip.adapt.extract import ViewDataset

    bad = tmp_path / "broken.png"
    bad.write_bytes(b"not a png")
    cfg = get_cfg_default()
    ds = ViewDataset([str(bad)], build_transform(cfg, is_train=False))
    with pytest.raises(ImageReadError) as direct:
        ds[0]
    with pytest.raises(ImageReadError) as via_worker:
        next(iter(DataLoader(ds, num_workers=1)))
    assert str(via_worker.value) == str(direct.value)
    assert str(direct.value).startswith(f"Cannot decode image {bad}")


def test_every_image_read_goes_through_one_function():
    from fsclip.adapt import extract
    from fsclip.engine.data import images, manager
    from fsclip.kit import clipfns
    from fsclip.prompting import visual_data

    for module in (extract, manager, clipfns, visual_data):
        assert module.read_image is images.read_image, module.__name__


def test_transforms_coop_train_and_test_pipelines():
    cfg = get_cfg_default()
    cfg.INPUT.TRANSFORMS = ("random_resized_crop", "random_flip", "normalize")
    cfg.INPUT.INTERPOLATION = "bicubic"
    names = [type(t).__name__ for t in build_transform(cfg, is_train=True).transforms]
    assert names == ["RandomResizedCrop", "RandomHorizontalFlip", "ToTensor", "Normalize"]
    names = [type(t).__name__ for t in build_transform(cfg, is_train=False).transforms]
    assert names == ["Resize", "CenterCrop", "ToTensor", "Normalize"]
    from PIL import Image
    out = build_transform(cfg, is_train=False)(Image.new("RGB", (300, 260)))
    assert out.shape == (3, 224, 224) and out.dtype == torch.float32
    cfg.INPUT.TRANSFORMS = ("random_fip",)
    with pytest.raises(ValueError, match='unknown transform "random_fip"'):
        build_transform(cfg, is_train=True)
