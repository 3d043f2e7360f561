"""VT-CLIP and CALIP-FS learn: on the offline kit at 4 shots, each beats zero-shot CLIP by MARGIN
on both synthetic datasets with MicroRN (mean of seeds 1-3, see tests/kit_learning.py), and
VT-CLIP also with MicroViT.

CALIP is training-free: its runs are in the MicroRN table (printed with ``-s``) for docs/methods/vtclip_calip.md,
without an assertion. The micro-CLIPs were pretrained through a global pooling only, and on
the kit the betas CALIP's val search picks leave it at zero-shot accuracy.
"""

from __future__ import annotations

import pytest
from kit_learning import DATASETS, MARGIN, learning_table

from fsclip.clip.loader import kit_model_names

TRAINED = ["VTCLIP", "CALIP_FS"]

pytestmark = [
    pytest.mark.learning,
    pytest.mark.skipif(not {"MicroRN", "MicroViT"} <= set(kit_model_names()), reason="kit weights missing"),
]


@pytest.fixture(scope="module")
def results(kit_root, kit_cache, tmp_path_factory):
    return learning_table("micro_rn", TRAINED + ["CALIP"], kit_root, kit_cache,
                          tmp_path_factory.mktemp("learn_out_vtclip"))


@pytest.mark.parametrize("dataset", DATASETS)
@pytest.mark.parametrize("method", TRAINED)
def test_method_beats_zero_shot(results, dataset, method):
    assert results[(dataset, method)] >= results[(dataset, "ZeroShot")] + MARGIN, (method, dataset, results)


@pytest.fixture(scope="module")
def vit_results(kit_root, kit_cache, tmp_path_factory):
    """VT-CLIP on MicroViT: V_s are the patch tokens through the last block, ln_post and proj."""
    return learning_table("micro_vit", ["VTCLIP"], kit_root, kit_cache, tmp_path_factory.mktemp("learn_out_vtclip_vit"))


@pytest.mark.parametrize("dataset", DATASETS)
def test_vtclip_on_vit_beats_zero_shot(vit_results, dataset):
    assert vit_results[(dataset, "VTCLIP")] >= vit_results[(dataset, "ZeroShot")] + MARGIN, vit_results
