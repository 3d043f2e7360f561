"""Few-shot runs report the shots actually used per class, and warn when a class has fewer
training images than DATASET.NUM_SHOTS (CoOp's rule keeps all of them); the picks stay CoOp's."""

from __future__ import annotations

import random

from fsclip.engine.data.base import Datum, count_per_class, load_or_create_fewshot, sample_fewshot


def items(counts: dict, prefix: str) -> list:
    return [Datum(impath=f"/data/{prefix}/{name}/{i}.jpg", label=label, classname=name)
            for label, (name, n) in enumerate(counts.items()) for i in range(n)]


def test_count_per_class_is_compact():
    assert count_per_class(items({"a": 3, "b": 3, "c": 3}, "x"), 3) == "3 x 3 classes"
    counts = {f"c{i}": 16 for i in range(98)}
    counts.update({"cat": 5, "dog": 7, "owl": 5})
    assert count_per_class(items(counts, "x"), 16) == "16 x 98 classes; 5: cat, owl; 7: dog"
    # without a class at the expected count, the commonest count is summarised
    assert count_per_class(items({"a": 2, "b": 2, "c": 1}, "x"), 4) == "2 x 2 classes; 1: c"
    assert count_per_class([], 4) == "no images"


def test_short_classes_warn_keep_all_and_picks_equal_coops(tmp_path, capsys):
    train = items({"red": 10, "green": 3, "blue": 20, "pink": 1}, "train")
    val = items({"red": 6, "green": 6, "blue": 2, "pink": 6}, "val")
    fs_train, fs_val = load_or_create_fewshot(train, val, 4, 7, str(tmp_path), "/data")
    rng = random.Random(7)  # CoOp: train sampled first, then val, on one seeded generator
    assert fs_train == sample_fewshot(train, 4, rng) and fs_val == sample_fewshot(val, 4, rng)
    out = capsys.readouterr().out.splitlines()
    assert ("Warning: DATASET.NUM_SHOTS is 4 but 2 of 4 classes have fewer training images, so all "
            "of theirs are used: green (3), pink (1)") in out
    assert "Shots per class: 4 x 2 classes; 1: pink; 3: green" in out
    assert "Few-shot val images per class: 4 x 3 classes; 2: blue" in out
    # the same lines when the split file is read back
    again = load_or_create_fewshot(train, val, 4, 7, str(tmp_path), "/data")
    assert again == (fs_train, fs_val)
    out = capsys.readouterr().out
    assert "Loading preprocessed few-shot data" in out and "Shots per class: 4 x 2 classes; 1: pink; 3: green" in out
    assert "Warning: DATASET.NUM_SHOTS is 4" in out


def test_no_warning_when_every_class_has_enough(tmp_path, capsys):
    train = items({"red": 5, "green": 5}, "train")
    load_or_create_fewshot(train, items({"red": 2, "green": 2}, "val"), 2, 1, str(tmp_path), "/data")
    out = capsys.readouterr().out
    assert "Warning" not in out and "Shots per class: 2 x 2 classes" in out


def test_custom_classes_too_small_for_every_split_are_named(tmp_path, capsys):
    """Some classes too small for a val and test image: a warning naming them; a folder where
    no class gets a test image is an error saying how many images a class needs."""
    import pytest
    from test_datasets import build, make_custom_flat

    from fsclip.datasets.common import DatasetError

    make_custom_flat(str(tmp_path), sizes=(10, 7, 3, 1))
    ds = build("custom", str(tmp_path), opts=("DATASET.CUSTOM_DIR", "mypets"))
    assert ds.num_classes == 4
    out = capsys.readouterr().out
    assert "Warning: 2 of 4 classes of" in out and "need at least 4 images" not in out
    assert "a class needs at least 4 images" in out and "red fox (3), zebra (1)" in out
    make_custom_flat(str(tmp_path / "tiny"), sizes=(2, 2))
    with pytest.raises(DatasetError, match=r"the val split comes out empty .*at least 4 images"):
        build("custom", str(tmp_path / "tiny"), opts=("DATASET.CUSTOM_DIR", "mypets"))
    with pytest.raises(DatasetError, match=r"at least 2 images .* golden_retriever \(1\)"):
        make_custom_flat(str(tmp_path / "one"), sizes=(1,))
        build("custom", str(tmp_path / "one"), opts=("DATASET.CUSTOM_DIR", "mypets", "DATASET.CUSTOM_SPLIT", (0.5, 0.0)))
