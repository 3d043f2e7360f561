"""SAFE's prompt-choice study (Fig. 8, issue #24): template mining, CuPL-style files, linear
fine-tuning of W_c (TRAINER.SAFE.TRAIN_CLASSIFIER), the study table/chart and prompts.sh."""

from __future__ import annotations

import contextlib
import io
import json
import os
import os.path as osp
import re
import sys

import pytest
import torch
import torch.nn.functional as F
from conftest import REPO, run_script
from kit_learning import kit_trainer
from results_tree import write_log

from fsclip.adapt.heads import HeadWithClassifier
from fsclip.adapt.prompts import mine_templates, prompt_classifier
from fsclip.clip.loader import kit_model_names, load_clip
from fsclip.clip.text import text_classifier
from fsclip.errors import ConfigError
from fsclip.results import study
from fsclip.templates import template_pool

needs_kit = pytest.mark.skipif(not {"MicroRN", "MicroViT"} <= set(kit_model_names()), reason="kit weights missing")
TINY = ["TRAINER.SAFE.ITERS", 6, "TRAINER.SAFE.EVAL_EVERY", 3, "TRAINER.SAFE.LRS", "[1e-3]", "TRAINER.SAFE.WDS", "[0.0]"]


def _quiet(fn, *args, **kwargs):
    with contextlib.redirect_stdout(io.StringIO()) as buf:
        out = fn(*args, **kwargs)
    return out, buf.getvalue()


def test_the_pool_is_lin_et_al_s_180_templates_each_with_one_slot():
    pool = template_pool()
    assert len(pool) == 180 and len(set(pool)) == 180 and pool == sorted(pool)
    assert all(t.count("{}") == 1 for t in pool)
    assert "a photo of a {}." in pool and "itap of a {}." in pool  # CoOp's and Tip-Adapter's


@needs_kit
def test_mining_keeps_the_templates_with_the_best_zero_shot_accuracy():
    """Per-template accuracy computed by hand, one classifier at a time; the mined list is the top k."""
    model = load_clip("MicroRN").eval()
    classes = ["circle", "square", "triangle"]
    pool = template_pool()[:12]
    g = torch.Generator().manual_seed(0)
    feats = torch.randn(30, model.text_projection.shape[1], generator=g)
    labels = torch.randint(0, 3, (30,), generator=g)
    templates, accs = mine_templates(model, classes, feats, labels, pool, k=5)
    by_hand = []
    for i, t in enumerate(pool):
        w = text_classifier(model, classes, [t]).float()
        acc = float(((F.normalize(feats, dim=-1) @ w.t()).argmax(-1) == labels).float().mean() * 100)
        by_hand.append((-acc, i, t))
    best = sorted(by_hand)[:5]
    assert templates == [t for _, _, t in best]
    assert accs == pytest.approx([-a for a, _, _ in best], abs=1e-4)
    assert accs == sorted(accs, reverse=True)
    with pytest.raises(ConfigError, match="MINED_TEMPLATES must be between 1 and 12"):
        mine_templates(model, classes, feats, labels, pool, k=13)


@needs_kit
def test_safe_mines_on_the_few_shot_train_and_val_images_only(kit_root, kit_cache, tmp_path, monkeypatch):
    seen = {}
    import fsclip.adapt.trainer as adapt_trainer
    real = adapt_trainer.mine_templates

    def spy(model, classnames, features, labels, pool, k):
        seen.update(n=features.shape[0], labels=labels.clone(), k=k)
        return real(model, classnames, features, labels, pool, k)

    monkeypatch.setattr(adapt_trainer, "mine_templates", spy)
    trainer, log = _quiet(kit_trainer, "SAFE", "synth_shapes", kit_root, kit_cache, str(tmp_path), 1, "micro_rn", 2,
                          TINY + ["TRAINER.FEATURES.PROMPTS", "mined", "TRAINER.FEATURES.MINED_TEMPLATES", 4])
    train_val = torch.cat([trainer.labels("train"), trainer.labels("val")])
    assert seen["k"] == 4 and seen["n"] == len(train_val) and torch.equal(seen["labels"], train_val)
    assert len(trainer.mined_templates) == 4 and "Template mining: kept 4 of 180" in log
    expected = text_classifier(trainer.clip_model, trainer.classnames, trainer.mined_templates).float()
    torch.testing.assert_close(trainer.text_weights.cpu(), expected)
    assert not trainer._test_allowed  # nothing read the test split while choosing


def test_mined_is_refused_where_there_are_no_image_features():
    with pytest.raises(ConfigError, match="PROMPTS mined .* frozen-feature trainers"):
        prompt_classifier(None, "mined", "synth_shapes", ["a", "b"])


@needs_kit
def test_kit_cupl_files_cover_their_dataset_s_classes(kit_root, kit_cache, tmp_path):
    for dataset in ("synth_shapes", "synth_textures"):
        path = osp.join(REPO, "fsclip", "kit", "prompts", f"{dataset}.json")
        trainer, _ = _quiet(kit_trainer, "SAFE", dataset, kit_root, kit_cache, str(tmp_path / dataset), 1,
                            "micro_rn", 1, TINY + ["TRAINER.FEATURES.PROMPTS", path])
        prompts = {k: v for k, v in json.load(open(path, encoding="utf-8")).items() if not k.startswith("_")}
        assert set(prompts) == set(trainer.classnames) and all(len(v) >= 3 for v in prompts.values())


# ----------------------------------------------------------------------------- linear fine-tuning
def test_an_untrained_classifier_copy_gives_the_frozen_classifier_s_logits():
    w = F.normalize(torch.randn(5, 8), dim=-1)
    head = HeadWithClassifier(torch.nn.Linear(8, 8), w)
    torch.testing.assert_close(head.unit_weight(), w)
    head.weight.data.mul_(3.0)  # a scaled row is the same direction: still unit after renormalising
    torch.testing.assert_close(head.unit_weight(), w)
    x = torch.randn(4, 8)
    assert torch.equal(head(x), head.head(x))


@needs_kit
def test_train_classifier_trains_w_c_saves_it_and_eval_only_reproduces(kit_root, kit_cache, tmp_path):
    opts = TINY + ["TRAINER.SAFE.TRAIN_CLASSIFIER", True]
    trainer, _ = _quiet(kit_trainer, "SAFE", "synth_shapes", kit_root, kit_cache, str(tmp_path / "run"), 1,
                        "micro_rn", 2, opts)
    init = trainer.text_weights.clone()
    images = torch.randn(2, 3, *trainer.cfg.INPUT.SIZE)
    frozen_logits = trainer.model_inference(images)
    # before training the trainable W_c is W_c: the same logits as plain SAFE
    plain, _ = _quiet(kit_trainer, "SAFE", "synth_shapes", kit_root, kit_cache, str(tmp_path / "plain"), 1,
                      "micro_rn", 2, TINY)
    torch.testing.assert_close(frozen_logits, plain.model_inference(images))
    assert trainer.per_class_state() and not plain.per_class_state()
    _, log = _quiet(trainer.train)
    trained = trainer.classifier.unit_weight().detach()
    assert not torch.allclose(trained, init)  # W_c moved
    acc = float(re.findall(r"^\* accuracy: ([\d.]+)%$", log, re.M)[-1])
    again, _ = _quiet(kit_trainer, "SAFE", "synth_shapes", kit_root, kit_cache, str(tmp_path / "eval"), 1,
                      "micro_rn", 2, opts)
    _quiet(again.load_model, str(tmp_path / "run"))
    torch.testing.assert_close(again.classifier.unit_weight().detach(), trained)
    torch.testing.assert_close(again.model_inference(images), trainer.model_inference(images))
    _, log2 = _quiet(again.test)
    assert float(re.findall(r"^\* accuracy: ([\d.]+)%$", log2, re.M)[-1]) == acc


@needs_kit
def test_train_classifier_is_safe_s_own(kit_root, kit_cache, tmp_path):
    with pytest.raises(ConfigError, match="TRAIN_CLASSIFIER is SAFE's"):
        kit_trainer("SAFE_A", "synth_shapes", kit_root, kit_cache, str(tmp_path), 1, "micro_rn", 1,
                    ["TRAINER.SAFE.TRAIN_CLASSIFIER", True])


# ----------------------------------------------------------------------------- the study's table
def test_study_table_and_chart_from_a_results_tree(tmp_path, capsys):
    for folder, accs in (("a", [60.0, 62.0]), ("b", [70.0, None])):
        for seed, acc in enumerate(accs, 1):
            write_log(str(tmp_path / folder / f"seed{seed}"), acc, cfg="micro_rn", dataset="synth_shapes", seed=seed,
                      crashed=acc is None)
    out = str(tmp_path / "studies" / "prompts")
    code = study.main(["--title", "T", "--out", out, "--header", "text classifier",
                       f"Class name={tmp_path / 'a'}", f"CuPL={tmp_path / 'b'}", f"Mined={tmp_path / 'none'}"])
    printed = capsys.readouterr()
    assert code == 0
    text = open(out + ".md", encoding="utf-8").read()
    assert text in printed.out
    assert "| Class name | 61.00 +- 1.00 | 2 |" in text and "| CuPL | 70.00 +- 0.00 | 1 |" in text
    assert "| Mined | - | 0 |" in text
    assert printed.err.count("WARNING") == 2 and "seed2" in printed.err  # the crashed seed, the missing folder
    assert open(out + ".png", "rb").read(8) == b"\x89PNG\r\n\x1a\n"
    assert study.main(["--title", "T", "--out", str(tmp_path / "x"), f"A={tmp_path / 'none'}"]) == 1
    assert "ERROR: no variant of the study has a result" in capsys.readouterr().err


@pytest.mark.slow
@needs_kit
def test_prompts_sh_end_to_end_on_the_kit(kit_root, kit_cache, tmp_path):
    env = dict(os.environ, DATA=kit_root, OUTPUT=str(tmp_path / "output"), PYTHON=sys.executable, SEEDS="1",
               FSCLIP_SYNTH_WORKERS="1", FEATURES=kit_cache)
    out = run_script(env, "safe/prompts.sh", "synth_shapes", "2", "micro_rn", "TRAINER.FEATURES.CACHE_DIR", kit_cache,
                     "TRAINER.FEATURES.MINED_TEMPLATES", "3", *[str(x) for x in TINY])
    stem = osp.join(env["OUTPUT"], "studies", "safe_prompts_synth_shapes_micro_rn_2shots")
    assert open(stem + ".md", encoding="utf-8").read() in out and osp.getsize(stem + ".png") > 0
    for label, tag, key in (("Class name", "classname", "PROMPTS: classname"), ("Vanilla", "single", "PROMPTS: single"),
                            ("Ensemble", "", "PROMPTS: ensemble"), ("Template mining", "mined", "PROMPTS: mined"),
                            ("CuPL", "cupl", "synth_shapes.json"), ("Linear fine-tuning", "linear", "TRAIN_CLASSIFIER: True")):
        folder = osp.join(env["OUTPUT"], "synth_shapes", "SAFE", f"micro_rn{'_' + tag if tag else ''}_2shots")
        log = open(osp.join(folder, "seed1", "log.txt"), encoding="utf-8").read()
        assert key in log, (label, folder)
        acc = float(re.findall(r"^\* accuracy: ([\d.]+)%$", log.split("Finish training")[1], re.M)[-1])
        assert re.search(rf"^\| {re.escape(label)} \| {acc:.2f} \+- 0\.00 \| 1 \|$", out, re.M), out[-2000:]
