"""OpenCLIP backbones through the backbone interface, on tiny random-weight models built from
custom model configs (``fsclip.clip.tiny_openclip``), saved and reloaded through the loader path.

Every reference is OpenCLIP's own computation on the model as built (its ``encode_image``,
``encode_text`` on full-context tokens of its tokenizer, ``logit_scale`` / ``logit_bias``), never
a path of the backbone under test.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import fsclip.datasets  # noqa: F401
import fsclip.trainers  # noqa: F401  (registers the trainers)
from fsclip.backend import build_trainer
from fsclip.cli import extend_cfg, main
from fsclip.clip.backbone import BackboneCapabilityError
from fsclip.clip.families import load_backbone
from fsclip.clip.openclip import OpenCLIPError, OpenCLIPWeightsNotFoundError, _tokenizer
from fsclip.clip.tiny_openclip import build_tiny_openclip, save_tiny_hf_tokenizer, save_tiny_openclip
from fsclip.engine.config import get_cfg_default
from fsclip.errors import ConfigError
from fsclip.prompting import TextPromptLearner
from fsclip.runs import LOG_FILE
from fsclip.templates import get_templates

open_clip = pytest.importorskip("open_clip")
KINDS = ("vit", "siglip")
NAMES = ["circle", "square", "red triangle"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """kind -> (the model as built, its saved paths); 64 px (the toy dataset's tests)."""
    folder = str(tmp_path_factory.mktemp("openclip_tiny"))
    out = {}
    for seed, kind in enumerate(KINDS):
        model, cfg = build_tiny_openclip(kind, seed=seed, image_size=64)
        out[kind] = (model, save_tiny_openclip(model, cfg, folder, name=f"fsclip-test-{kind}"))
    return out


def spec(paths, form: str) -> str:
    return f"openclip:local-dir:{paths['dir']}" if form == "dir" else f"openclip:{paths['config']}:{paths['weights']}"


def full_tokens(model, texts):
    """OpenCLIP's own tokenization: CLIP's BPE padded to the model's whole context."""
    return open_clip.SimpleTokenizer(context_length=model.context_length)(texts)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("form", ["dir", "config+file"])
def test_a_saved_tiny_model_reloads_with_its_weights_and_scoring(tiny, kind, form):
    model, paths = tiny[kind]
    bb = load_backbone(spec(paths, form), precision="fp32")
    assert bb.family == "openclip" and bb.input_resolution == 64
    saved = model.state_dict()
    assert all(torch.equal(v, saved[k]) for k, v in bb.model.state_dict().items())
    images = torch.randn(3, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(bb.encode_image(images), model.encode_image(images), rtol=0, atol=0)
    assert bb.logit_scale == pytest.approx(float(model.logit_scale.detach().exp()))
    if kind == "siglip":
        assert (bb.scoring, bb.logit_bias) == ("sigmoid", -10.0)
    else:
        assert (bb.scoring, bb.logit_bias) == ("softmax", None)


@pytest.mark.parametrize("kind", KINDS)
def test_has_pooling_head_says_whether_the_head_has_parameters(tiny, kind):
    """SAFE asks ``has_pooling_head`` at start-up instead of copying the head: both must agree, for
    the ViT split and for a tower without one (the whole encoder as trunk, an identity head)."""
    bb = load_backbone(spec(tiny[kind][1], "dir"), precision="fp32")
    for split in (bb.split, "global"):
        bb.split = split
        assert bb.has_pooling_head == any(True for _ in bb.pooling_head().parameters()), split
    assert not bb.has_pooling_head


@pytest.mark.parametrize("kind", KINDS)
def test_text_from_tokens_and_from_embeddings_equals_open_clip(tiny, kind):
    model, paths = tiny[kind]
    bb = load_backbone(spec(paths, "dir"), precision="fp32")
    texts = ["a photo of a circle.", "a blurry photo of a big red triangle."]
    tokens, full = bb.tokenize(texts), full_tokens(model, texts)
    # causal CLIP text: cut after the last EOT; SigLIP's bidirectional text reads the last position
    assert tokens.shape[1] == (int(full.argmax(-1).max()) + 1 if kind == "vit" else 32) < 77
    assert torch.equal(tokens, full[:, :tokens.shape[1]])
    with torch.no_grad():
        ref = model.encode_text(full)
        torch.testing.assert_close(bb.encode_tokens(tokens), ref, rtol=1e-5, atol=1e-5)
        emb = bb.token_embedding(tokens)
        torch.testing.assert_close(bb.encode_text_embeddings(emb, tokens), ref, rtol=1e-5, atol=1e-5)
    assert ("text-prompts" in bb.capabilities) == (kind == "vit")


@pytest.mark.parametrize("kind", KINDS + ("timm-siglip",))
def test_trunk_then_pooling_head_is_the_image_encoder(tiny, tmp_path, kind):
    if kind in tiny:
        model, paths = tiny[kind]
    else:  # SigLIP's tower: a timm ViT pooled by an attention (MAP) head
        model, cfg = build_tiny_openclip(kind, seed=5)
        paths = save_tiny_openclip(model, cfg, str(tmp_path), name="fsclip-test-timm-siglip")
    bb = load_backbone(spec(paths, "dir"), precision="fp32")
    side = bb.input_resolution
    images = torch.randn(2, 3, side, side)
    head = bb.pooling_head()
    assert all(p.requires_grad for p in head.parameters())
    with torch.no_grad():
        ref = model.encode_image(images)
        tokens = bb.trunk(images)
        assert tokens.dim() == 3  # tokens before the last block: the head is that block and the pooling
        torch.testing.assert_close(head(tokens), ref, rtol=1e-5, atol=1e-5)
        pooled, dense = bb.encode_image_with_dense(images)
        torch.testing.assert_close(pooled, ref, rtol=1e-5, atol=1e-5)
        assert dense.shape[0] == 2 and dense.shape[1] == tokens.shape[1]
    assert bb.trunk_kind.endswith("tokens-before-last-block")


def _toy_trainer(toy_root, tmp_path, weights, name, **opts):
    cfg = get_cfg_default()
    extend_cfg(cfg)
    cfg.DATASET.NAME = "ToyImages"
    cfg.DATASET.ROOT = toy_root
    cfg.DATASET.NUM_SHOTS = 2
    cfg.TRAINER.NAME = name
    cfg.MODEL.BACKBONE.NAME = weights
    cfg.INPUT.SIZE = (64, 64)
    cfg.INPUT.TRANSFORMS = ("normalize",)
    cfg.INPUT.PIXEL_MEAN, cfg.INPUT.PIXEL_STD = list(open_clip.OPENAI_DATASET_MEAN), list(open_clip.OPENAI_DATASET_STD)
    cfg.DATALOADER.NUM_WORKERS = 0
    cfg.OUTPUT_DIR = str(tmp_path / name)
    cfg.USE_CUDA = False
    if "FEATURES" in cfg.TRAINER:
        cfg.TRAINER.FEATURES.CACHE_DIR = str(tmp_path / "cache")
    cfg.merge_from_list([x for kv in opts.items() for x in kv])
    return build_trainer(cfg)


@pytest.mark.parametrize("kind", KINDS)
def test_zero_shot_is_the_scaled_cosine_plus_bias_and_siglip_scores_by_sigmoid(toy_root, tmp_path, tiny, kind):
    model, paths = tiny[kind]
    trainer = _toy_trainer(toy_root, tmp_path, spec(paths, "dir"), "ZeroshotCLIP2")
    images = next(iter(trainer.test_loader))["img"]
    templates = get_templates("ToyImages", "ensemble")
    with torch.no_grad():
        rows = []
        for name in trainer.dm.dataset.classnames:
            t = F.normalize(model.encode_text(full_tokens(model, [tpl.format(name) for tpl in templates])), dim=-1)
            rows.append(F.normalize(t.mean(0), dim=0))
        cos = F.normalize(model.encode_image(images), dim=-1) @ torch.stack(rows).t()
        hand = model.logit_scale.exp() * cos + (model.logit_bias if kind == "siglip" else 0.0)
        got = trainer.model_inference(images)
    torch.testing.assert_close(got, hand, rtol=1e-4, atol=1e-4)
    scores = trainer.backbone.probabilities(got)
    if kind == "siglip":
        torch.testing.assert_close(scores, torch.sigmoid(hand), rtol=1e-4, atol=1e-6)
        assert float(scores.sum(dim=1).max()) < 0.5  # bias -10: every class unlikely, not a distribution
    else:
        torch.testing.assert_close(scores.sum(dim=1), torch.ones(len(images)))


def test_a_prompt_learner_on_openclip_starts_as_the_template_and_shares_its_prefix(tiny):
    model, paths = tiny["vit"]
    bb = load_backbone(spec(paths, "dir"), precision="fp32")
    learner = TextPromptLearner(bb, NAMES, ctx_init="a photo of a")
    with torch.no_grad():
        ref = model.encode_text(full_tokens(model, [f"a photo of a {n}." for n in NAMES]))
        shared = learner.text_features(bb)
        learner.share_prefix = False
        plain = learner.text_features(bb)
    torch.testing.assert_close(plain, ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(shared, ref, rtol=1e-5, atol=1e-5)
    learner.share_prefix = True
    learner.text_features(bb).sum().backward()
    assert learner.ctx.grad is not None and float(learner.ctx.grad.abs().sum()) > 0


@pytest.mark.parametrize("kind", KINDS)
def test_safe_on_an_openclip_vit_starts_as_zero_shot_and_trains_its_pooling_head(toy_root, tmp_path, tiny, kind):
    """SAFE's own split on OpenCLIP (sequential grid): AttnPool_F = AttnPool_O gives zero-shot's
    logits (SigLIP's bias included), a short fit moves AttnPool_F only, and the
    batched grid is one ConfigError line saying what to set."""
    name = spec(tiny[kind][1], "dir")
    quick = {"TRAINER.SAFE.GRID_BATCHED": False, "TRAINER.SAFE.ITERS": 4, "TRAINER.SAFE.EVAL_EVERY": 2,
             "TRAINER.SAFE.LRS": "[1e-3]", "TRAINER.SAFE.WDS": "[0.0]", "TRAINER.FEATURES.PROMPTS": "ensemble"}
    safe = _toy_trainer(toy_root, tmp_path, name, "SAFE", **quick)
    zs = _toy_trainer(toy_root, tmp_path, name, "ZeroshotCLIP2")
    images = next(iter(safe.test_loader))["img"]
    torch.testing.assert_close(safe.model_inference(images), zs.model_inference(images), rtol=1e-4, atol=1e-4)
    head = safe.trainable()  # a fresh AttnPool_F: SAFE's loss reaches every one of its parameters
    safe.loss(head, safe.batches()).sum().backward()
    assert all(p.grad is not None for p in head.parameters()) and any(float(p.grad.abs().sum()) > 0 for p in head.parameters())
    frozen = [p.detach().clone() for p in safe.head_o.parameters()]
    safe.fit_safe()  # the sequential grid runs on this backbone; AttnPool_O stays as it was
    assert all(torch.equal(a, b) for a, b in zip(frozen, safe.head_o.parameters()))
    with pytest.raises(ConfigError, match="GRID_BATCHED False"):
        _toy_trainer(toy_root, tmp_path / "batched", name, "SAFE")
    with pytest.raises(ConfigError, match="fsclip-explain attention needs clip-internals.*gradcam or shapley"):
        safe.attention_maps(images)  # fsclip-explain attention: one line, not a TypeError
    with pytest.raises(ConfigError, match="fsclip-explain attention needs clip-internals"):
        zs.attention_maps(images)
    with pytest.raises(ConfigError, match="correspondence of SAFE needs clip-internals.*gradcam or shapley"):
        safe.trained_visual()


@pytest.mark.parametrize("kind,name,needs", [("vit", "VTCLIP", "clip-internals"),
                                             ("siglip", "CoOp", "text-prompts"), ("vit", "CLIPLoRA", "clip-internals")])
def test_an_unsupported_method_and_backbone_pair_is_one_config_error(toy_root, tmp_path, tiny, kind, name, needs):
    with pytest.raises(ConfigError) as err:
        _toy_trainer(toy_root, tmp_path, spec(tiny[kind][1], "dir"), name)
    text = str(err.value)
    assert "\n" not in text and name in text and needs in text and "MODEL.BACKBONE.NAME" in text
    if name != "CLIPLoRA":
        assert isinstance(err.value, BackboneCapabilityError)


def test_missing_openclip_weights_say_where_to_put_them(tmp_path):
    cache = str(tmp_path / "hub")
    with pytest.raises(OpenCLIPWeightsNotFoundError) as err:
        load_backbone("openclip:ViT-B-16:laion2b_s34b_b88k", cache_dir=cache)
    text = str(err.value)
    assert "\n" not in text and cache in text and "Nothing is downloaded" in text
    assert "huggingface-cli download laion/CLIP-ViT-B-16-laion2B-s34B-b88K open_clip_pytorch_model.bin" in text
    with pytest.raises(OpenCLIPWeightsNotFoundError, match="no pretrained tag of ViT-B-16 .*laion2b_s34b_b88k"):
        load_backbone("openclip:ViT-B-16:no_such_tag", cache_dir=cache)
    with pytest.raises(OpenCLIPWeightsNotFoundError, match="timm/ViT-B-16-SigLIP2"):
        load_backbone("openclip:ViT-B-16-SigLIP2:webli", cache_dir=cache)
    with pytest.raises(OpenCLIPWeightsNotFoundError, match="tokenizer of ViT-B-16-SigLIP2 .*must be local.*tokenizer.json"):
        _tokenizer("ViT-B-16-SigLIP2", 64, cache)
    with pytest.raises(OpenCLIPError, match="not an OpenCLIP architecture"):
        load_backbone("openclip:ViT-Q-99:x", cache_dir=cache)


def test_a_hugging_face_tokenizer_loads_offline_from_the_model_folder_and_the_hub_cache(toy_root, tmp_path):
    """SigLIP's text side reads a Hugging Face tokenizer (``hf_tokenizer_name``): from the model's
    own folder (local-dir) or from the HF hub cache (config + weights), offline, giving OpenCLIP's
    own ``HFTokenizer`` tokens; zero-shot CLIP through it is the hand formula on those tokens."""
    pytest.importorskip("transformers")
    from open_clip.tokenizer import HFTokenizer

    model, cfg = build_tiny_openclip("siglip", seed=3, image_size=64)
    repo = "fsclip-test/tiny-wordlevel"
    cfg["text_cfg"] = dict(cfg["text_cfg"], hf_tokenizer_name=repo, tokenizer_kwargs={"clean": "canonicalize"})
    paths = save_tiny_openclip(model, cfg, str(tmp_path / "m"), name="fsclip-test-siglip-hf")
    save_tiny_hf_tokenizer(paths["dir"], ["a", "photo", "of", "the", *" ".join(NAMES).split()])
    snapshot = tmp_path / "hub" / f"models--{repo.replace('/', '--')}" / "snapshots" / ("0" * 40)
    save_tiny_hf_tokenizer(str(snapshot), ["a", "photo", "of", "the", *" ".join(NAMES).split()])
    (snapshot.parent.parent / "refs").mkdir()
    (snapshot.parent.parent / "refs" / "main").write_text("0" * 40)
    reference = HFTokenizer(paths["dir"], context_length=model.context_length, clean="canonicalize")
    texts = ["a photo of a circle.", "A photo of the RED triangle!", "a blurry photo of a square"]
    for name, cache in ((spec(paths, "dir"), ""), (spec(paths, "config+file"), str(tmp_path / "hub"))):
        bb = load_backbone(name, precision="fp32", cache_dir=cache)
        tokens = bb.tokenize(texts)
        assert torch.equal(tokens, reference(texts)), name
        # by hand (vocabulary <pad> </s> <unk> a photo of the circle square red triangle): cleaned,
        # lower-cased, unknown words <unk>, then </s> and padding
        assert tokens[1, :8].tolist() == [3, 4, 5, 6, 9, 10, 1, 0] and tokens[2, :8].tolist() == [3, 2, 4, 5, 3, 8, 1, 0]
        with torch.no_grad():
            torch.testing.assert_close(bb.encode_tokens(tokens), model.encode_text(reference(texts)), rtol=0, atol=0)
    trainer = _toy_trainer(toy_root, tmp_path, spec(paths, "dir"), "ZeroshotCLIP2")
    images = next(iter(trainer.test_loader))["img"]
    templates = get_templates("ToyImages", "ensemble")
    with torch.no_grad():
        rows = [F.normalize(F.normalize(model.encode_text(reference([t.format(c) for t in templates])), dim=-1).mean(0),
                            dim=0) for c in trainer.dm.dataset.classnames]
        hand = model.logit_scale.exp() * F.normalize(model.encode_image(images), dim=-1) @ torch.stack(rows).t()
        torch.testing.assert_close(trainer.model_inference(images), hand + model.logit_bias, rtol=1e-4, atol=1e-4)


def test_pixel_statistics_other_than_the_weights_are_one_config_error(toy_root, tmp_path, tiny):
    with pytest.raises(ConfigError, match=r"set INPUT.PIXEL_MEAN \[0.48145466, 0.4578275, 0.40821073\] INPUT.PIXEL_STD"):
        _toy_trainer(toy_root, tmp_path, spec(tiny["vit"][1], "dir"), "ZeroshotCLIP",
                     **{"INPUT.PIXEL_MEAN": [0.5, 0.5, 0.5]})
    with pytest.raises(ConfigError, match=r"takes 64 px images: set INPUT.SIZE \[64, 64\]"):
        _toy_trainer(toy_root, tmp_path, spec(tiny["vit"][1], "dir"), "ZeroshotCLIP", **{"INPUT.SIZE": (32, 32)})


def test_train_py_prints_a_missing_openclip_file_as_one_error_line(toy_root, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["--trainer", "ZeroshotCLIP", "--output-dir", str(out), "DATASET.NAME", "ToyImages",
                 "DATASET.ROOT", toy_root, "DATALOADER.NUM_WORKERS", "0", "MODEL.BACKBONE.NAME",
                 "openclip:ViT-B-16-SigLIP2:webli", "MODEL.BACKBONE.CACHE_DIR", str(tmp_path / "hub")]) == 2
    lines = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("ERROR:")]
    assert len(lines) == 1 and "timm/ViT-B-16-SigLIP2" in lines[0] and "huggingface-cli download" in lines[0]
    assert lines[0] in (out / LOG_FILE).read_text()


FAMILY = ("ZeroshotCLIP2", "LinearProbe", "TipAdapter", "TipAdapterF", "CrossModal", "LPPP", "GDA", "ProKeR", "CoOp")


@pytest.mark.slow
def test_the_frozen_feature_family_and_coop_run_on_the_kit_with_an_openclip_vit(kit_root, tmp_path):
    """Each method's kit run (micro_vit configs, 4 shots, seed 1) on a tiny OpenCLIP ViT at the
    kit's 128 px; random weights, so the accuracies only have to be accuracies, and the probe's
    the best of them (it learns from features whose classes the random text side cannot name)."""
    from kit_learning import run_kit

    model, cfg = build_tiny_openclip("vit", seed=0, image_size=128)
    paths = save_tiny_openclip(model, cfg, str(tmp_path), name="fsclip-test-kit-vit")
    name = f"openclip:local-dir:{paths['dir']}"
    acc = {m: run_kit(m, "synth_shapes", kit_root, str(tmp_path / "cache"), str(tmp_path / m), 1, "micro_vit",
                      opts=["MODEL.BACKBONE.NAME", name]) for m in FAMILY}
    assert all(0.0 <= a <= 100.0 for a in acc.values()), acc
    assert acc["LinearProbe"] > acc["ZeroshotCLIP2"], acc


@pytest.mark.realsize
def test_a_real_size_openclip_vit_b16_runs_one_step(tmp_path):
    """OpenCLIP's ViT-B-16 with random weights, saved and loaded as openclip:ViT-B-16:<file>: image
    features, the trunk/head split, the text encoder and one prompt-learning step at 224 px."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = open_clip.create_model("ViT-B-16")
    assert sum(p.numel() for p in model.parameters()) == 149_620_737  # as OpenAI's ViT-B/16
    path = str(tmp_path / "vit_b16.bin")
    torch.save(model.state_dict(), path)
    bb = load_backbone(f"openclip:ViT-B-16:{path}", device=device, precision="fp32")
    images = torch.randn(2, 3, 224, 224, device=device)
    with torch.no_grad():
        ref = bb.encode_image(images)
        assert ref.shape == (2, 512) and bb.trunk(images).shape == (2, 197, 768)
        torch.testing.assert_close(bb.pooling_head().to(device)(bb.trunk(images)), ref, rtol=1e-4, atol=1e-4)
    learner = TextPromptLearner(bb, NAMES, n_ctx=16).to(device)
    opt = torch.optim.SGD(learner.parameters(), lr=0.002)
    logits = bb.logits(ref, F.normalize(learner.text_features(bb).float(), dim=-1))
    F.cross_entropy(logits, torch.tensor([0, 1], device=device)).backward()
    opt.step()
    assert torch.isfinite(learner.ctx).all() and float(learner.ctx.grad.abs().sum()) > 0
