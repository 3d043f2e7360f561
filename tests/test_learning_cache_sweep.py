"""A whole frozen-trunk sweep on one kit dataset sends each image through CLIP's trunk once.

Every method that keeps CLIP frozen (every registered ``FrozenFeatureTrainer`` with a kit
config) runs shots 1/2/4/8/16 x seeds 1-3 on SynthShapes with one shared feature cache, as a
sweep does. The cache's counters (``computed``, ``reused`` of every ``FeatureCache`` the runs
create) and the images each run stored must show that no image of any feature space went
through the trunk twice, whatever the method, shot count or seed. Slow (about a hundred kit
runs), so it runs with the learning tests.
"""

from __future__ import annotations

import collections
import os
import os.path as osp

import pytest

from fsclip.adapt.cache import FeatureCache
from fsclip.adapt.trainer import FrozenFeatureTrainer
from fsclip.backend import TRAINER_REGISTRY
from kit_learning import SEEDS, config_file, run_kit

pytestmark = pytest.mark.learning

SHOTS = (1, 2, 4, 8, 16)
# Short training: what is tested is which images go through the trunk, not accuracy. Trainers
# not listed here run their kit config as it is.
SHORT = {
    "SAFE": ["TRAINER.SAFE.ITERS", 10, "TRAINER.SAFE.EVAL_EVERY", 5, "TRAINER.SAFE.LRS", [1e-3]],
    "SAFE_A": ["TRAINER.SAFE.ITERS", 10, "TRAINER.SAFE.EVAL_EVERY", 5, "TRAINER.SAFE.LRS", [1e-3],
               "TRAINER.TIP.EPOCHS", 2],
    "TipAdapterF": ["TRAINER.TIP.EPOCHS", 2],
    "CLIPAdapter": ["TRAINER.CLIP_ADAPTER.EPOCHS", 2, "TRAINER.CLIP_ADAPTER.LRS", [1e-2]],
    "LinearProbe": ["TRAINER.LINEAR_PROBE.C_GRID", [1.0, 1e-2], "TRAINER.LINEAR_PROBE.SEARCH_STEPS", 1,
                    "TRAINER.LINEAR_PROBE.MAX_ITER", 10],
    "CrossModal": ["TRAINER.CROSSMODAL.ITERS", 10, "TRAINER.CROSSMODAL.EVAL_EVERY", 5,
                   "TRAINER.CROSSMODAL.LRS", [1e-2]],
    "WiSEFT": ["TRAINER.WISEFT.ITERS", 10, "TRAINER.WISEFT.EVAL_EVERY", 5, "TRAINER.WISEFT.LRS", [1e-2]],
    "LPPP": ["TRAINER.LPPP.EPOCHS", 10],
    "VTCLIP": ["OPTIM.MAX_EPOCH", 2],
    "CALIP": ["TRAINER.CALIP.SEARCH_STEP", [5, 5]],
    "CALIP_FS": ["OPTIM.MAX_EPOCH", 2, "TRAINER.CALIP.FS.LRS", [0.002], "TRAINER.CALIP.SEARCH_STEP", [5, 5]],
}


def frozen_trainers(kit_cfg: str = "micro_rn"):
    """Registered frozen-trunk trainers with a kit config (methods added later join by themselves)."""
    names = []
    for name in sorted(TRAINER_REGISTRY.registered_names()):
        cls = TRAINER_REGISTRY.get(name)
        if isinstance(cls, type) and issubclass(cls, FrozenFeatureTrainer) and osp.isfile(config_file(name, kit_cfg)):
            names.append(name)
    return names


def test_a_sweep_of_every_frozen_method_extracts_each_image_once(kit_root, tmp_path, monkeypatch):
    caches, stored = [], collections.Counter()
    real_init, real_store = FeatureCache.__init__, FeatureCache._store

    def counting_init(self, *args, **kwargs):
        real_init(self, *args, **kwargs)
        caches.append(self)

    def recording_store(self, folder, space, keys, feats, label):
        stored.update((folder, k) for k in keys)
        return real_store(self, folder, space, keys, feats, label)

    monkeypatch.setattr(FeatureCache, "__init__", counting_init)
    monkeypatch.setattr(FeatureCache, "_store", recording_store)

    cache = str(tmp_path / "features")  # empty: the sweep's first runs extract, the rest reuse
    methods = frozen_trainers()
    assert {"SAFE", "TipAdapter", "LinearProbe"} <= set(methods), methods
    runs = 0
    for method in methods:
        for shots in SHOTS:
            for seed in SEEDS:
                acc = run_kit(method, "synth_shapes", kit_root, cache,
                              str(tmp_path / "out" / method / f"{shots}shots" / f"seed{seed}"), seed, shots=shots,
                              opts=SHORT.get(method))
                assert 0.0 <= acc <= 100.0
                runs += 1

    twice = [key for key, n in stored.items() if n > 1]
    assert not twice, f"{len(twice)} (space, image) pairs went through the trunk more than once: {twice[:3]}"
    computed = sum(c.computed for c in caches)
    reused = sum(c.reused for c in caches)
    assert len(caches) >= runs  # every run read its features through the shared cache
    assert computed == len(stored)  # nothing was computed without being stored for the next runs
    # The test and val images are the same in every run: all but the first run of each space
    # reuse them, so reuse dwarfs extraction over ~100 runs.
    spaces = {folder for folder, _ in stored}
    n_images = sum(len(files) for _, _, files in os.walk(osp.join(kit_root, "synth_shapes", "images")))
    for folder in spaces:  # at most every image of the dataset once per space
        assert sum(1 for f, _ in stored if f == folder) <= n_images
    assert reused > 10 * computed, (computed, reused)
    print(f"{runs} runs of {len(methods)} methods: {computed} images computed in {len(spaces)} feature "
          f"spaces, {reused} served from the cache")

