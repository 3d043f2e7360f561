"""fsclip.clip.loader: load tiny CLIPs by path, by official name from a cache folder, from the
offline kit folder; offline error messages; corrupt files; precision."""

from __future__ import annotations

import os
import shutil
import urllib.request

import pytest
import torch

from fsclip.clip import loader
from fsclip.clip.compat import import_clip
from fsclip.clip.loader import (
    CLIPWeightsError, CLIPWeightsNotFoundError, input_resolution, load_clip, load_clip_from_cfg,
    resolve_clip_weights, resolve_precision,
)
from fsclip.clip.tiny import build_tiny_clip, save_tiny_clip
from fsclip.errors import UserFacingError

clip = import_clip()
IMAGES = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="module")
def tiny():
    return {"RN": build_tiny_clip("RN", seed=1), "ViT": build_tiny_clip("ViT", seed=2)}


@pytest.fixture(scope="module")
def saved(tiny, tmp_path_factory):
    folder = tmp_path_factory.mktemp("weights")
    files = {}
    for arch, model in tiny.items():
        for fmt in ("state_dict", "torchscript"):
            files[arch, fmt] = save_tiny_clip(model, str(folder / f"{arch}_{fmt}.pt"), fmt=fmt)
    return files


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("the loader must never download")

    monkeypatch.setattr(urllib.request, "urlopen", refuse)


def same_outputs(a, b):
    with torch.no_grad():
        torch.testing.assert_close(a.encode_image(IMAGES), b.encode_image(IMAGES), rtol=0, atol=0)
        tokens = clip.tokenize(["a photo of a dog.", "a cat"])
        torch.testing.assert_close(a.encode_text(tokens), b.encode_text(tokens), rtol=0, atol=0)


@pytest.mark.parametrize("arch", ["RN", "ViT"])
@pytest.mark.parametrize("fmt", ["state_dict", "torchscript"])
def test_load_by_path(tiny, saved, arch, fmt):
    model = load_clip(saved[arch, fmt], device="cpu", precision="fp32")
    assert isinstance(model, clip.model.CLIP)
    assert not model.training
    assert model.visual.conv1.weight.dtype == torch.float32
    # fp32 files keep their exact values (build_model rounds through fp16; the loader restores)
    same_outputs(model, tiny[arch])


def test_torchscript_archive_looks_like_openai(saved):
    archive = torch.jit.load(saved["RN", "torchscript"], map_location="cpu")
    assert hasattr(archive, "encode_image") and hasattr(archive, "encode_text")
    state = archive.state_dict()
    assert int(state["input_resolution"]) == 64 and int(state["context_length"]) == 77
    assert int(state["vocab_size"]) == 49408
    # clip-anytorch's own loader reads it too
    model, _ = clip.load(saved["RN", "torchscript"], device="cpu", jit=False)
    assert isinstance(model, clip.model.CLIP)


def test_wrapped_state_dict_and_module_prefix(tiny, tmp_path):
    state = {f"module.{k}": v for k, v in tiny["ViT"].state_dict().items()}
    path = tmp_path / "wrapped.pth"
    torch.save({"state_dict": state, "epoch": 3}, path)
    same_outputs(load_clip(str(path)), tiny["ViT"])


@pytest.mark.parametrize("name,arch", [("RN50", "RN"), ("ViT-B/16", "ViT")])
def test_official_name_from_cache_dir(tiny, saved, tmp_path, name, arch):
    filename = os.path.basename(loader.official_models()[name])
    assert filename == loader.official_filename(name)
    shutil.copy(saved[arch, "torchscript"], tmp_path / filename)
    assert resolve_clip_weights(name, str(tmp_path)) == str(tmp_path / filename)
    same_outputs(load_clip(name, cache_dir=str(tmp_path)), tiny[arch])


def test_default_cache_dir_is_clips(tiny, saved, tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    os.makedirs(tmp_path / ".cache" / "clip")
    shutil.copy(saved["RN", "state_dict"], tmp_path / ".cache" / "clip" / "RN101.pt")
    assert resolve_clip_weights("RN101") == str(tmp_path / ".cache" / "clip" / "RN101.pt")
    same_outputs(load_clip("RN101"), tiny["RN"])


def test_all_documented_names_are_official():
    urls = loader.official_models()
    assert set(loader.MODEL_NAMES) <= set(urls)
    assert loader.official_filename("ViT-L/14") == "ViT-L-14.pt"


def test_offline_error_names_file_url_and_config_keys(tmp_path):
    with pytest.raises(CLIPWeightsNotFoundError) as info:
        load_clip("ViT-B/16", cache_dir=str(tmp_path))
    message = str(info.value)
    assert str(tmp_path / "ViT-B-16.pt") in message
    assert clip.clip._MODELS["ViT-B/16"] in message
    assert "MODEL.BACKBONE.CACHE_DIR" in message and "MODEL.BACKBONE.NAME" in message
    assert isinstance(info.value, FileNotFoundError) and isinstance(info.value, UserFacingError)


def test_unknown_name_error(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(CLIPWeightsNotFoundError) as info:
        load_clip("no_such_model.pt")
    message = str(info.value)
    assert str(tmp_path / "no_such_model.pt") in message
    assert "RN50" in message and "MODEL.BACKBONE.NAME" in message


def test_empty_name_error():
    with pytest.raises(CLIPWeightsNotFoundError, match="MODEL.BACKBONE.NAME"):
        load_clip("")


def test_kit_name(tiny, saved, tmp_path, monkeypatch):
    monkeypatch.setattr(loader, "KIT_WEIGHTS_DIR", tmp_path)
    assert loader.kit_model_names() == []
    shutil.copy(saved["ViT", "state_dict"], tmp_path / "MicroTest.pt")
    assert loader.kit_model_names() == ["MicroTest"]
    assert resolve_clip_weights("MicroTest") == str(tmp_path / "MicroTest.pt")
    same_outputs(load_clip("MicroTest"), tiny["ViT"])
    with pytest.raises(CLIPWeightsNotFoundError, match="MicroTest"):  # listed as a known kit name
        load_clip("MicroOther")


def test_corrupt_file_names_path(tmp_path):
    path = tmp_path / "RN50.pt"
    path.write_bytes(b"this is not a checkpoint" * 100)
    with pytest.raises(CLIPWeightsError) as info:
        load_clip(str(path))
    assert str(path) in str(info.value)
    assert clip.clip._MODELS["RN50"] in str(info.value)  # file named like an official one


def test_truncated_file_names_path(saved, tmp_path):
    data = open(saved["RN", "state_dict"], "rb").read()
    path = tmp_path / "cut.pt"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CLIPWeightsError, match="cut.pt"):
        load_clip(str(path))


def test_not_a_clip_state_dict(tmp_path):
    path = tmp_path / "resnet.pth"
    torch.save({"conv1.weight": torch.zeros(1)}, path)
    with pytest.raises(CLIPWeightsError) as info:
        load_clip(str(path))
    assert str(path) in str(info.value) and "text_projection" in str(info.value)


def test_unsafe_pickle_is_refused(tmp_path):
    path = tmp_path / "ckpt.pth"
    torch.save({"state_dict": {"x": torch.zeros(1)}, "scheduler": torch.optim.SGD}, path)
    with pytest.raises(CLIPWeightsError, match="ckpt.pth"):
        load_clip(str(path))


def test_resolve_precision(capsys):
    assert resolve_precision("auto", "cpu") == "fp32"
    assert resolve_precision("auto", "cuda") == "fp16"
    assert resolve_precision("fp16", torch.device("cuda", 0)) == "fp16"
    assert resolve_precision("amp", "cuda") == "fp32"
    assert resolve_precision("fp32", "cuda") == "fp32"
    assert capsys.readouterr().out == ""
    assert resolve_precision("fp16", "cpu") == "fp32"
    assert "fp16 needs CUDA" in capsys.readouterr().out
    with pytest.raises(ValueError, match="bf16"):
        resolve_precision("bf16", "cpu")


def test_fp16_on_cpu_falls_back_to_fp32(saved, capsys):
    model = load_clip(saved["RN", "state_dict"], precision="fp16")
    assert model.visual.conv1.weight.dtype == torch.float32
    assert model.dtype == torch.float32
    assert "fp16 needs CUDA" in capsys.readouterr().out


def test_load_from_cfg(tiny, saved, tmp_path):
    from fsclip.engine.config import get_cfg_default

    cfg = get_cfg_default()
    cfg.USE_CUDA = False
    cfg.MODEL.BACKBONE.NAME = saved["ViT", "state_dict"]
    model = load_clip_from_cfg(cfg, precision="fp16")
    assert next(model.parameters()).device.type == "cpu"
    same_outputs(model, tiny["ViT"])
    cfg.MODEL.BACKBONE.NAME = "RN50x4"
    cfg.MODEL.BACKBONE.CACHE_DIR = str(tmp_path)
    with pytest.raises(CLIPWeightsNotFoundError, match="RN50x4.pt"):
        load_clip_from_cfg(cfg, precision="fp32", device="cpu")


def test_input_resolution(tiny):
    assert input_resolution(tiny["RN"]) == 64
    assert input_resolution(tiny["ViT"].visual) == 64


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_fp16_on_cuda(tiny, saved):
    model = load_clip(saved["RN", "torchscript"], device="cuda")  # auto -> fp16
    assert model.visual.conv1.weight.dtype == torch.float16
    assert model.visual.conv1.weight.device.type == "cuda"
    with torch.no_grad():
        half = model.encode_image(IMAGES.cuda()).float().cpu()
        full = tiny["RN"].encode_image(IMAGES)
    torch.testing.assert_close(half, full, rtol=0.05, atol=0.02)
    amp = load_clip(saved["RN", "torchscript"], device="cuda", precision="amp")
    assert amp.visual.conv1.weight.dtype == torch.float32
