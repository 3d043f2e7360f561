"""Config defaults and errors; registries with "do you mean" hints."""

from __future__ import annotations

import pytest
from yacs.config import CfgNode as CN

from fsclip.backend import BACKEND
from fsclip.engine.config import get_cfg_default
from fsclip.engine.registry import Registry, build_trainer, check_availability


def test_defaults_follow_dassl():
    cfg = get_cfg_default()
    assert cfg.INPUT.SIZE == (224, 224)
    assert cfg.DATALOADER.NUM_WORKERS == 4
    assert cfg.OPTIM.NAME == "adam" and cfg.OPTIM.LR == 0.0003
    assert cfg.TEST.FINAL_MODEL == "last_step" and cfg.TRAIN.PRINT_FREQ == 10
    assert cfg.OPTIM.WARMUP_EPOCH == -1 and cfg.OPTIM.WARMUP_CONS_LR == 1e-5
    assert cfg.DATASET.NUM_SHOTS == -1 and cfg.SEED == -1
    # a fresh copy each time
    cfg.OPTIM.LR = 1.0
    assert get_cfg_default().OPTIM.LR == 0.0003


def test_unknown_keys_are_errors(tmp_path):
    cfg = get_cfg_default()
    bad = tmp_path / "bad.yaml"
    bad.write_text("OPTIM:\n  LRR: 0.1\n")
    with pytest.raises(KeyError, match="OPTIM.LRR"):
        cfg.merge_from_file(str(bad))
    with pytest.raises(AssertionError, match="Non-existent key: TRAINER.NOPE.X"):
        cfg.merge_from_list(["TRAINER.NOPE.X", "1"])


def test_extend_then_merge_order(tmp_path):
    cfg = get_cfg_default()
    cfg.TRAINER.MINE = CN()
    cfg.TRAINER.MINE.ALPHA = 1.0
    ds, method = tmp_path / "ds.yaml", tmp_path / "m.yaml"
    ds.write_text("DATASET:\n  NAME: A\nOPTIM:\n  LR: 0.1\n")
    method.write_text("OPTIM:\n  LR: 0.2\nTRAINER:\n  MINE:\n    ALPHA: 2.0\n")
    cfg.merge_from_file(str(ds))
    cfg.merge_from_file(str(method))
    cfg.merge_from_list(["OPTIM.LR", "0.3"])
    assert (cfg.DATASET.NAME, cfg.OPTIM.LR, cfg.TRAINER.MINE.ALPHA) == ("A", 0.3, 2.0)


def test_registry_duplicates_and_hints():
    reg = Registry("THING")

    @reg.register()
    class CoOp:
        pass

    with pytest.raises(KeyError, match="already registered"):
        reg.register(CoOp)
    with pytest.raises(KeyError, match='Do you mean "CoOp"'):
        reg.get("COOP")
    with pytest.raises(ValueError, match='Do you mean "CoOp"'):
        check_availability("CoOP", reg.registered_names())


@pytest.mark.skipif(BACKEND != "bundled", reason="the bundled engine's build_trainer (Dassl's lists no names)")
def test_build_trainer_unknown_name_suggests():
    cfg = get_cfg_default()
    cfg.TRAINER.NAME = "ZeroshotClip"
    import fsclip.trainers  # noqa: F401  (registers the built-in trainers)
    with pytest.raises(ValueError, match='Do you mean "ZeroshotCLIP'):
        build_trainer(cfg)
