"""CLIP-LoRA learns: on the offline kit with MicroViT at 4 shots (mean of seeds 1-3), LoRA on both
encoders (configs/trainers/CLIPLoRA/micro_vit.yaml: 5 x shots iterations) beats zero-shot CLIP by
MARGIN points on both kit datasets."""

from __future__ import annotations

import pytest
from kit_learning import DATASETS, MARGIN, learning_table

from fsclip.clip.loader import kit_model_names

pytestmark = [
    pytest.mark.learning,
    pytest.mark.skipif("MicroViT" not in kit_model_names(), reason="kit weights missing"),
]


@pytest.fixture(scope="module")
def results(kit_root, kit_cache, tmp_path_factory):
    return learning_table("micro_vit", ["CLIPLoRA"], kit_root, kit_cache, tmp_path_factory.mktemp("learn_lora"))


@pytest.mark.parametrize("dataset", DATASETS)
def test_clip_lora_beats_zero_shot(results, dataset):
    assert results[(dataset, "CLIPLoRA")] >= results[(dataset, "ZeroShot")] + MARGIN, (dataset, results)
