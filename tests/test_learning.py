"""Methods learn: on the offline kit at 4 shots, SAFE, SAFE-A, Tip-Adapter and Tip-Adapter-F
beat zero-shot CLIP on both synthetic datasets, and SAFE-A is at least Tip-Adapter-F (MicroRN);
SAFE also beats zero-shot with MicroViT, whose pooling head is the last transformer block.

Each method's accuracy is its mean over seeds 1-3 (see tests/kit_learning.py).
"""

from __future__ import annotations

import pytest
from kit_learning import DATASETS, MARGIN, learning_table

from fsclip.clip.loader import kit_model_names

METHODS = ["SAFE", "SAFE_A", "TipAdapter", "TipAdapterF"]

pytestmark = [
    pytest.mark.learning,
    pytest.mark.skipif(not {"MicroRN", "MicroViT"} <= set(kit_model_names()), reason="kit weights missing"),
]


@pytest.fixture(scope="module")
def results(kit_root, kit_cache, tmp_path_factory):
    return learning_table("micro_rn", METHODS, kit_root, kit_cache, tmp_path_factory.mktemp("learn_out"))


@pytest.mark.parametrize("dataset", DATASETS)
@pytest.mark.parametrize("method", METHODS)
def test_method_beats_zero_shot(results, dataset, method):
    zs = results[(dataset, "ZeroShot")]
    assert results[(dataset, method)] >= zs + MARGIN, (method, dataset, results)


@pytest.mark.parametrize("dataset", DATASETS)
def test_safe_a_at_least_tip_adapter_f(results, dataset):
    assert results[(dataset, "SAFE_A")] >= results[(dataset, "TipAdapterF")], results


@pytest.fixture(scope="module")
def vit_results(kit_root, kit_cache, tmp_path_factory):
    """SAFE on MicroViT: the ViT path, where the last transformer block is the pooling head."""
    return learning_table("micro_vit", ["SAFE"], kit_root, kit_cache, tmp_path_factory.mktemp("learn_out_vit"))


@pytest.mark.parametrize("dataset", DATASETS)
def test_safe_on_vit_beats_zero_shot(vit_results, dataset):
    assert vit_results[(dataset, "SAFE")] >= vit_results[(dataset, "ZeroShot")] + MARGIN, vit_results
