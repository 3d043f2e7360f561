"""MaPLe and PromptSRC learn: on the offline kit with MicroViT at 4 shots (mean of seeds 1-3),
each beats zero-shot CLIP by MARGIN points on both kit datasets (their ``micro_vit`` configs)."""

from __future__ import annotations

import pytest
from kit_learning import DATASETS, MARGIN, learning_table

from fsclip.clip.loader import kit_model_names

pytestmark = [
    pytest.mark.learning,
    pytest.mark.skipif("MicroViT" not in kit_model_names(), reason="kit weights missing"),
]
METHODS = ["MaPLe", "PromptSRC"]


_TABLES = {}


@pytest.fixture
def results(kit_root, kit_cache, tmp_path_factory, method):
    """The method's table (one per method, so that ``-k MaPLe`` runs MaPLe's runs only)."""
    if method not in _TABLES:
        _TABLES[method] = learning_table("micro_vit", [method], kit_root, kit_cache,
                                         tmp_path_factory.mktemp(f"learn_{method}"))
    return _TABLES[method]


@pytest.mark.parametrize("dataset", DATASETS)
@pytest.mark.parametrize("method", METHODS)
def test_beats_zero_shot(results, dataset, method):
    assert results[(dataset, method)] >= results[(dataset, "ZeroShot")] + MARGIN, (method, dataset, results)
