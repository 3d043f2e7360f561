"""GDA and ProKeR learn: on the offline kit at 4 shots (MicroRN), each beats zero-shot CLIP by
MARGIN points on both synthetic datasets, its accuracy the mean over seeds 1-3 (tests/kit_learning.py)."""

from __future__ import annotations

import pytest
from kit_learning import DATASETS, MARGIN, learning_table

from fsclip.clip.loader import kit_model_names

METHODS = ["GDA", "ProKeR"]

pytestmark = [
    pytest.mark.learning,
    pytest.mark.skipif("MicroRN" not in kit_model_names(), reason="kit weights missing"),
]


@pytest.fixture(scope="module")
def results(kit_root, kit_cache, tmp_path_factory):
    return learning_table("micro_rn", METHODS, kit_root, kit_cache, tmp_path_factory.mktemp("learn_closed_form"))


@pytest.mark.parametrize("dataset", DATASETS)
@pytest.mark.parametrize("method", METHODS)
def test_method_beats_zero_shot(results, dataset, method):
    zs = results[(dataset, "ZeroShot")]
    assert results[(dataset, method)] >= zs + MARGIN, (method, dataset, results)
