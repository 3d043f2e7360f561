"""CLIP-SVD learns: on the offline kit with MicroViT at 4 shots (mean of seeds 1-3), tuning the
singular values of every matrix of both encoders (configs/trainers/CLIPSVD/micro_vit.yaml: 5 x shots
iterations) beats zero-shot CLIP by MARGIN points on both kit datasets."""

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
    return learning_table("micro_vit", ["CLIPSVD"], kit_root, kit_cache, tmp_path_factory.mktemp("learn_svd"))


@pytest.mark.parametrize("dataset", DATASETS)
def test_clip_svd_beats_zero_shot(results, dataset):
    assert results[(dataset, "CLIPSVD")] >= results[(dataset, "ZeroShot")] + MARGIN, (dataset, results)
