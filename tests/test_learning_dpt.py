"""DPT's variants learn: on the offline kit with MicroViT at 4 shots (mean of seeds 1-3), each of
the five beats zero-shot CLIP by MARGIN points on both kit datasets.

VPT-CLIP-Shallow runs with its own kit config (``micro_vit_shallow``: 40 epochs, where the deep
variants need 4): ten random prompt tokens entering MicroViT's first block drop its SynthShapes
accuracy from 34% to 20-24% before any training, and a few epochs only bring it back to zero-shot.
"""

from __future__ import annotations

import pytest
from kit_learning import DATASETS, MARGIN, SEEDS, learning_table, run_kit

from fsclip.clip.loader import kit_model_names

VARIANTS = ["VPT_CLIP", "VPT_CLIP_CAVPT", "VLP_CLIP", "VLP_CLIP_CAVPT"]
SHALLOW = "VPT_CLIP_Shallow"

pytestmark = [
    pytest.mark.learning,
    pytest.mark.skipif("MicroViT" not in kit_model_names(), reason="kit weights missing"),
]


@pytest.fixture(scope="module")
def results(kit_root, kit_cache, tmp_path_factory):
    out = tmp_path_factory.mktemp("learn_dpt")
    table = learning_table("micro_vit", VARIANTS, kit_root, kit_cache, out)
    for dataset in DATASETS:  # VPT_CLIP with its shallow kit config
        accs = [run_kit("VPT_CLIP", dataset, kit_root, kit_cache, str(out / dataset / "shallow" / f"seed{s}"), s,
                        "micro_vit_shallow") for s in SEEDS]
        table[(dataset, SHALLOW)] = sum(accs) / len(accs)
        print(f"micro_vit {dataset:15s} {SHALLOW:14s} seeds {SEEDS}: " + " ".join(f"{a:5.1f}" for a in accs))
    return table


@pytest.mark.parametrize("dataset", DATASETS)
@pytest.mark.parametrize("method", VARIANTS + [SHALLOW])
def test_variant_beats_zero_shot(results, dataset, method):
    assert results[(dataset, method)] >= results[(dataset, "ZeroShot")] + MARGIN, (method, dataset, results)
