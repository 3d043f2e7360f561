"""``--eval-only --model-dir``: the model folder's recorded classes, shots and seed are checked and
logged (fsclip.model_dir), official CoOp/CoCoOp/DPT folders evaluate, CTX_INIT counts words.

Issue #22 items 2, 11, 22, 23. Runs go through ``fsclip.cli.main`` in this process on tiny CLIPs.
"""

from __future__ import annotations

import os
import os.path as osp
import shutil

import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from conftest import make_toy_tree
from fsclip.cli import main
from fsclip.clip.text import encode_text, tokenize_short
from fsclip.clip.tiny import build_tiny_clip, save_tiny_clip
from fsclip.model_dir import CLASSNAMES_FILE


def make_custom(root: str, folder: str, classes, n: int = 6, shade: int = 0) -> None:
    for c, cname in enumerate(classes):
        os.makedirs(osp.join(root, folder, cname), exist_ok=True)
        for i in range(n):
            color = ((70 * c + 9 * i + shade) % 256, 60 + 40 * c, 200 - 30 * c)
            Image.new("RGB", (8, 8), color).save(osp.join(root, folder, cname, f"{i}.png"))


class World:
    """Tiny CLIP weights, the toy dataset and Custom folders: A (cat dog owl), B (ant bee fox: same
    count, other names), C (ant bee), A2 (other images of A's classes)."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.root = osp.join(base, "data")
        make_toy_tree(self.root)
        make_custom(self.root, "A", ["cat", "dog", "owl"])
        make_custom(self.root, "B", ["ant", "bee", "fox"])
        make_custom(self.root, "C", ["ant", "bee"])
        make_custom(self.root, "A2", ["cat", "dog", "owl"], shade=5)
        self.weights = save_tiny_clip(build_tiny_clip("RN", image_resolution=64, text_width=128, text_layers=2),
                                      osp.join(base, "tiny.pt"))
        self.cache = osp.join(base, "cache")

    def argv(self, trainer: str, out: str, *opts: str, data: str = "", flags=()) -> list:
        dataset = ["DATASET.NAME", "Custom", "DATASET.CUSTOM_DIR", data] if data else ["DATASET.NAME", "ToyImages"]
        return ["--root", self.root, "--trainer", trainer, "--seed", "1", "--output-dir", osp.join(self.base, out),
                *flags, *dataset, "DATASET.NUM_SHOTS", "2", "MODEL.BACKBONE.NAME", self.weights,
                "INPUT.SIZE", "(64, 64)", "DATALOADER.NUM_WORKERS", "0", "USE_CUDA", "False",
                "DATALOADER.TRAIN_X.BATCH_SIZE", "4", "OPTIM.MAX_EPOCH", "1", "TRAINER.COOP.N_CTX", "2",
                "TRAINER.FEATURES.CACHE_DIR", self.cache, "TRAINER.FEATURES.TRAIN_VIEWS", "2",
                "TRAINER.FEATURES.PROMPTS", "single", "TRAINER.TIP.SEARCH_STEP", "[4, 2]", *opts]

    def eval_argv(self, trainer: str, model: str, out: str, *opts: str, data: str = "") -> list:
        return self.argv(trainer, out, *opts, data=data, flags=["--eval-only", "--model-dir", osp.join(self.base, model)])

    def log(self, out: str) -> str:
        with open(osp.join(self.base, out, "log.txt")) as f:
            return f.read()


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    w = World(str(tmp_path_factory.mktemp("model_dir")))
    assert main(w.argv("TipAdapter", "tip_A", data="A")) == 0
    assert main(w.argv("CoOp", "coop_A", data="A")) == 0
    return w


def refused(world, argv, out, capsys) -> str:
    """The one ERROR line of a refused run (exit 2, last line of the terminal and of log.txt)."""
    assert main(argv) == 2
    lines = capsys.readouterr().out.splitlines()
    errors = [l for l in lines if l.startswith("ERROR: ")]
    assert len(errors) == 1 and lines[-1] == errors[0], lines[-5:]
    assert world.log(out).splitlines()[-1] == errors[0]
    assert "size mismatch" not in errors[0] and "unexpected" not in errors[0]
    return errors[0]


def test_training_records_its_class_names(world):
    import json

    with open(osp.join(world.base, "tip_A", CLASSNAMES_FILE)) as f:
        assert json.load(f) == {"dataset": "Custom", "classnames": ["cat", "dog", "owl"]}


def test_per_class_model_on_other_classes_of_the_same_count_is_refused(world, capsys):
    line = refused(world, world.eval_argv("TipAdapter", "tip_A", "ev_B", data="B"), "ev_B", capsys)
    assert "trained on 3 classes of Custom" in line and "evaluates 3 classes of Custom" in line
    assert 'label 0 is "cat" there and "ant" here' in line and "per class" in line
    assert osp.join(world.base, "tip_A") in line
    assert not any(l.startswith("* accuracy") for l in world.log("ev_B").splitlines())  # no result recorded


def test_other_class_count_is_one_error_line_not_a_size_mismatch(world, capsys):
    line = refused(world, world.eval_argv("TipAdapter", "tip_A", "ev_C", data="C"), "ev_C", capsys)
    assert "trained on 3 classes of Custom" in line and "evaluates 2 classes" in line
    # a model folder without the class record (older runs): the load itself says what does not fit
    old = osp.join(world.base, "tip_A_old")
    shutil.copytree(osp.join(world.base, "tip_A"), old)
    os.remove(osp.join(old, CLASSNAMES_FILE))
    line = refused(world, world.eval_argv("TipAdapter", "tip_A_old", "ev_C_old", data="C"), "ev_C_old", capsys)
    assert "TipAdapter model in" in line and "scores 3 classes" in line and "evaluates 2 classes" in line
    assert "cannot verify" in world.log("ev_C_old")


def test_a_model_dir_that_does_not_exist_is_one_error_line_before_any_note(world, capsys):
    line = refused(world, world.eval_argv("TipAdapter", "never_trained", "ev_none", data="A"), "ev_none", capsys)
    assert osp.join(world.base, "never_trained") in line and "does not exist" in line and "train it first" in line
    assert "no record of its training run" not in world.log("ev_none")  # no misleading notes before it


def test_eval_log_records_the_models_dataset_classes_shots_and_seed(world, capsys):
    argv = world.eval_argv("CoOp", "coop_A", "ev_shots", data="A")
    argv[argv.index("DATASET.NUM_SHOTS") + 1] = "1"
    assert main(argv) == 0
    log = world.log("ev_shots")
    model = osp.join(world.base, "coop_A")
    assert f"Model from {model}: trained on Custom, 3 classes, 2 shots, seed 1" in log
    assert "Note: this run sets DATASET.NUM_SHOTS 1 but the model was trained with shots 2" in log
    assert "* accuracy:" in log
    # Tip-Adapter's cache keeps its saved size: the 2-shot cache is evaluated, and the log says so
    argv = world.eval_argv("TipAdapter", "tip_A", "ev_tip_shots", data="A")
    argv[argv.index("DATASET.NUM_SHOTS") + 1] = "1"
    assert main(argv) == 0
    assert "the result below is that of the model trained with shots 2" in world.log("ev_tip_shots")


def test_class_agnostic_models_evaluate_on_other_classes_and_csc_does_not(world):
    assert main(world.eval_argv("CoOp", "coop_A", "ev_coop_B", data="B")) == 0  # base-to-new / cross-dataset
    log = world.log("ev_coop_B")
    assert "Evaluating a class-agnostic CoOp model on other classes" in log and "* accuracy:" in log
    # class-specific contexts are per class (the check reads the record only: no CSC run needed)
    from fsclip.backend import build_trainer
    from fsclip.cli import build_parser, setup_cfg
    from fsclip.errors import ConfigError
    from fsclip.model_dir import check_model_dir

    args = build_parser().parse_args(world.eval_argv("CoOp", "coop_A", "ev_csc_B", "TRAINER.COOP.CSC", "True",
                                                     data="B"))
    csc = build_trainer(setup_cfg(args))
    with pytest.raises(ConfigError, match="CoOp's saved state is per class"):
        check_model_dir(csc, args.model_dir)


def test_same_class_names_from_other_images_evaluate(world):
    """The shift protocol (ImageNet -> V2/Sketch/A/R): other images of the same classes."""
    assert main(world.eval_argv("TipAdapter", "tip_A", "ev_A2", data="A2")) == 0
    log = world.log("ev_A2")
    assert "* accuracy:" in log and "other classes" not in log


# ------------------------------------------------------------------ official checkpoints
def official_folder(path: str, model: str, state: dict, epoch: int = 50) -> None:
    """A model folder as Dassl's save_checkpoint writes it for the official code (no fsclip record)."""
    os.makedirs(osp.join(path, model), exist_ok=True)
    torch.save({"state_dict": state, "epoch": epoch, "optimizer": {"state": {}, "param_groups": []},
                "scheduler": {"last_epoch": epoch}, "val_result": None},
               osp.join(path, model, f"model.pth.tar-{epoch}"))


def test_official_coop_folder_evaluates_with_a_note(world, capsys):
    official = osp.join(world.base, "official_coop")
    ctx = torch.randn(2, 128).half()
    official_folder(official, "prompt_learner", {
        "ctx": ctx, "token_prefix": torch.zeros(3, 1, 128).half(), "token_suffix": torch.zeros(3, 74, 128).half()})
    assert main(world.eval_argv("CoOp", "official_coop", "ev_official")) == 0  # no --load-epoch: the latest
    log = world.log("ev_official")
    assert f"Model from {official}: no record of its training run" in log
    assert "cannot verify that the model was trained on this run's classes" in log
    assert "model.pth.tar-50 to prompt_learner (epoch=50" in log and "* accuracy:" in log


def test_official_cocoop_and_vlp_checkpoints_load(world, tmp_path):
    from fsclip.backend import build_trainer
    from fsclip.cli import build_parser, setup_cfg

    def trainer(name, *opts, weights=world.weights):
        argv = world.argv(name, str(tmp_path / name), "MODEL.BACKBONE.NAME", weights, *opts)
        return build_trainer(setup_cfg(build_parser().parse_args(argv)))

    cocoop = trainer("CoCoOp", "TRAINER.COCOOP.N_CTX", "2")
    state = {k: torch.randn_like(v) for k, v in cocoop.prompt_learner.state_dict().items()}
    state.update(token_prefix=torch.zeros(3, 1, 128), token_suffix=torch.zeros(3, 74, 128))
    official_folder(str(tmp_path / "off_cocoop"), "prompt_learner", state, epoch=10)
    cocoop.load_model(str(tmp_path / "off_cocoop"))
    for k, v in cocoop.prompt_learner.state_dict().items():
        assert torch.equal(v, state[k]), k

    vit = save_tiny_clip(build_tiny_clip("ViT", image_resolution=64), str(tmp_path / "vit.pt"))
    vlp = trainer("VLP_CLIP", "TRAINER.DPT.PREC", "fp32", "TRAINER.DPT.VPT.LENGTH", "2",
                  "TRAINER.DPT.TEXT.N_CTX", "2", weights=vit)
    prompts, ctx = torch.randn_like(vlp.vpt.prompts).half(), torch.randn_like(vlp.prompt_learner.ctx).half()
    off = str(tmp_path / "off_vlp")
    official_folder(off, "image_encoder.transformer.ctx_learner", {"ctx": prompts})  # fanrena/DPT's names
    official_folder(off, "prompt_learner", {"ctx": ctx, "token_prefix": torch.zeros(3, 1, 64)})
    vlp.load_model(off)
    assert torch.equal(vlp.vpt.prompts.detach(), prompts.float())
    assert torch.equal(vlp.prompt_learner.ctx.detach(), ctx.float())
    assert not vlp.per_class_state()

    # CAVPT's K-way classifier is for the training loss only: one of another class count is not
    # loaded (as fanrena/DPT drops it), the rest is; so CAVPT models evaluate on other classes
    cavpt = trainer("VPT_CLIP_CAVPT", "TRAINER.DPT.PREC", "fp32", "TRAINER.DPT.VPT.LENGTH", "2", weights=vit)
    state = {k: torch.randn_like(v) for k, v in cavpt.cavpt.state_dict().items()}
    mine = cavpt.cavpt[0].classifier.weight.detach().clone()
    state["0.classifier.weight"] = torch.randn(5, mine.shape[1])
    cavpt.cavpt.load_state_dict(state)
    assert torch.equal(cavpt.cavpt[0].classifier.weight, mine)
    assert torch.equal(cavpt.cavpt[0].ln.weight, state["0.ln.weight"]) and not cavpt.per_class_state()


# ------------------------------------------------------------------ CTX_INIT counts words
def test_ctx_init_counts_words_and_keeps_the_other_tokens_fixed():
    from fsclip.prompting.prompt_learner import TextPromptLearner

    torch.manual_seed(0)
    model = build_tiny_clip("RN", image_resolution=64, text_width=128, text_layers=2).float().eval()
    names = ["cat", "red fox"]
    init = "a photo of a heart-shaped"  # 5 words, 7 BPE tokens ("heart", "-", "shaped")
    learner = TextPromptLearner(model, names, ctx_init=init)
    assert learner.n_ctx == 5 and learner.n_fixed == 2 and tuple(learner.ctx.shape) == (5, 128)
    tokens = tokenize_short([f"{init} {n}." for n in names])
    with torch.no_grad():
        assert torch.equal(learner.ctx, model.token_embedding(tokens[:1])[0, 1:6])
        want = F.normalize(encode_text(model, [f"{init} {n}." for n in names]).float(), dim=-1)
        got = F.normalize(learner.text_features(model).float(), dim=-1)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)  # the initial prompts are the template
    assert "the last 2 tokens of the init stay fixed" in learner.describe()
    # an official checkpoint of that init (5 context vectors) loads
    learner.load_state_dict({"ctx": torch.zeros(5, 128), "token_prefix": torch.zeros(2, 1, 128)})
    assert learner.ctx.abs().sum() == 0


def test_a_saved_model_that_does_not_fit_is_one_config_error(tmp_path):
    """Without a class record, a per-class head of another size fails to load as a ConfigError
    naming the model, the file and the shapes (not torch's raw RuntimeError)."""
    from collections import OrderedDict

    from fsclip.engine.compat import DasslCompatMixin
    from fsclip.errors import ConfigError

    class Holder(DasslCompatMixin):
        _models = OrderedDict(head=torch.nn.Linear(4, 2))

        def get_model_names(self):
            return list(self._models)

    official_folder(str(tmp_path), "head", torch.nn.Linear(4, 3).state_dict(), epoch=3)
    with pytest.raises(ConfigError, match=r"saved head in .*model\.pth\.tar-3 does not fit this run's head: "
                                          r"size mismatch for weight.*torch\.Size\(\[3, 4\]\)"):
        Holder().load_model(str(tmp_path))


@pytest.mark.parametrize("trainer", ["TipAdapter", "SAFE_A", "GDA", "ProKeR"])
def test_saved_class_count_reads_the_class_axis_of_the_per_class_state(trainer, kit_root, kit_cache, tmp_path):
    """The load-time check (FrozenFeatureTrainer.load_model) compares this with the run's classes:
    it must be the class axis (10 for SynthShapes), not the number of cached samples (20 at 2 shots)."""
    import contextlib
    import io

    from kit_learning import kit_trainer

    with contextlib.redirect_stdout(io.StringIO()):
        quick = ["TRAINER.TIP.SEARCH_STEP", "[2, 2]", "TRAINER.TIP.EPOCHS", 1]
        t = kit_trainer(trainer, "synth_shapes", kit_root, kit_cache, str(tmp_path), 1, "micro_rn", 2,
                        quick + ["TRAINER.SAFE.ITERS", 1, "TRAINER.SAFE.EVAL_EVERY", 1, "TRAINER.SAFE.LRS", "[0.0]",
                                 "TRAINER.SAFE.WDS", "[0.0]"] if trainer == "SAFE_A" else
                        quick if trainer == "TipAdapter" else [])
        t.fit()
    assert t.saved_class_count() == len(t.classnames) == 10
