"""Real model sizes: OpenAI's release shapes, loaded as the real files are, and every trainer on them.

The default suite checks the release-shaped random weights (``fsclip.clip.real_sizes``): their
parameter counts are the releases', they load by official name through ``MODEL.BACKBONE.CACHE_DIR``
like a downloaded file, and the image features have the releases' shapes (a 7x7 grid of 2048
channels for RN50, 14x14 + 1 tokens of 768 for ViT-B/16). The ``realsize`` tests run every
trainer for one step and one eval batch at 224 px with 100 classes on RN50 and ViT-B/16 (ViT-L/14
for the frozen-feature family) in fp32 and fp16: too slow for a 2-core CPU (fp16 convolutions run
at about 1 image/s there), they are run on a GPU by ``benchmarks/gpu_check.sh``
(``pytest -m realsize``; ``FSCLIP_TEST_DEVICE=cuda``).
"""

from __future__ import annotations

import contextlib
import io
import os
import re

import pytest
import torch

from fsclip.clip.loader import CLIPWeightsError, load_clip, official_filename
from fsclip.clip.real_sizes import ARCHS, PARAM_COUNTS, build_real_size_clip, write_real_size_weights


@pytest.fixture(scope="module")
def weights_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("clip_cache"))


@pytest.mark.parametrize("name", list(ARCHS))
def test_release_shapes_have_the_releases_parameter_counts(name):
    model = build_real_size_clip(name, init=False)
    assert sum(p.numel() for p in model.parameters()) == PARAM_COUNTS[name]
    assert model.visual.input_resolution == 224 and model.context_length == 77


@pytest.mark.parametrize("name,dense_shape,dim", [("RN50", (2048, 7, 7), 1024), ("ViT-B/32", (50, 768), 512)])
def test_release_shaped_weights_load_by_name_like_the_real_file(name, dense_shape, dim, weights_dir):
    from fsclip.clip.features import encode_image_with_dense
    from fsclip.clip.text import tokenize

    path = write_real_size_weights(name, weights_dir)
    assert os.path.basename(path) == official_filename(name)  # where a downloaded file would be
    sd = torch.load(path, weights_only=True)
    assert sd["visual.conv1.weight"].dtype == torch.float16  # stored in half, as released
    assert sd["ln_final.weight"].dtype == torch.float32 or name.startswith("RN")
    model = load_clip(name, cache_dir=weights_dir, precision="fp32")
    assert model.dtype == torch.float32
    with torch.no_grad():
        images = torch.randn(1, 3, 224, 224)
        glob, dense = encode_image_with_dense(model, images)
        text = model.encode_text(tokenize(["a photo of a dog.", "a photo of a cat."]))
    assert tuple(dense.shape[1:]) == dense_shape and glob.shape == (1, dim) and text.shape == (2, dim)
    assert torch.isfinite(glob).all() and glob.std() > 0  # the init keeps activations alive
    assert torch.allclose(glob, model.encode_image(images), atol=1e-4)


def test_a_tensor_of_the_wrong_shape_names_its_key(tmp_path):
    """#22 item 10: the message kept only "Error(s) in loading state_dict for CLIP:"."""
    from fsclip.clip.tiny import build_tiny_clip

    sd = build_tiny_clip("ViT").state_dict()
    sd["transformer.resblocks.0.mlp.c_fc.weight"] = torch.zeros(3, 3)
    path = str(tmp_path / "bad.pt")
    torch.save(sd, path)
    with pytest.raises(CLIPWeightsError, match=r"size mismatch for transformer\.resblocks\.0\.mlp\.c_fc\."
                                               r"weight: copying a param with shape torch\.Size\(\[3, 3\]\)"):
        load_clip(path)


def test_gpu_check_without_cuda_says_so_and_exits_0():
    import subprocess
    import sys

    from fsclip.kit.realsize import REPO

    res = subprocess.run(["bash", os.path.join(REPO, "benchmarks", "gpu_check.sh")], capture_output=True,
                         text=True, env={**os.environ, "PYTHON": sys.executable, "CUDA_VISIBLE_DEVICES": ""})
    assert res.returncode == 0 and res.stdout.strip().splitlines() == [
        "gpu_check: no CUDA device here (torch.cuda.is_available() is False); nothing to check"]


# ----------------------------------------------------------------- every trainer at a real size
DEVICE = os.environ.get("FSCLIP_TEST_DEVICE", "cpu")


def _cases():
    import fsclip.datasets  # noqa: F401
    import fsclip.trainers  # noqa: F401
    from fsclip.adapt.trainer import FrozenFeatureTrainer
    from fsclip.backend import TRAINER_REGISTRY
    from fsclip.kit.realsize import supports

    cases = []
    for t in TRAINER_REGISTRY.registered_names():
        cls = TRAINER_REGISTRY.get(t)
        if not cls.__module__.startswith("fsclip.trainers."):
            continue
        releases = ["RN50", "ViT-B/16"] + (["ViT-L/14"] if issubclass(cls, FrozenFeatureTrainer) else [])
        cases += [(t, r, p) for r in releases for p in ("fp32", "fp16") if supports(t, r)]
    return cases


CASES = _cases()


@pytest.fixture(scope="module")
def realsize_root(tmp_path_factory):
    return str(tmp_path_factory.mktemp("realsize"))


@pytest.mark.realsize
@pytest.mark.parametrize("trainer,release,prec", CASES, ids=["-".join(c).replace("/", "") for c in CASES])
def test_every_trainer_at_real_size(trainer, release, prec, realsize_root, weights_dir, tmp_path, monkeypatch):
    """One training step and one eval batch at 224 px, 100 classes, finite accuracy, fp32 learnables."""
    from fsclip.kit.realsize import real_size_trainer

    monkeypatch.setenv("FSCLIP_CPU_HALF", "1")
    write_real_size_weights(release, weights_dir)
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        t = real_size_trainer(trainer, release, prec, realsize_root, weights_dir, str(tmp_path / "run"), DEVICE)
        t.train()
    acc = [float(a) for a in re.findall(r"^\* accuracy: ([\d.]+)%$", buf.getvalue(), re.M)]
    assert acc and 0.0 <= acc[-1] <= 100.0, buf.getvalue()[-2000:]
    assert t.clip_model.dtype == (torch.float16 if prec == "fp16" else torch.float32)
    assert t.dm.num_classes == 100
    for name, model in t._models.items():
        for pname, p in model.named_parameters():
            if p.requires_grad:
                assert p.dtype == torch.float32 and torch.isfinite(p).all(), f"{name}.{pname} under {prec}"


# the methods that run on an OpenCLIP ViT (docs/backbones.md), each through one step at real size
OPENCLIP_CASES = ("ZeroshotCLIP2", "LinearProbe", "TipAdapter", "TipAdapterF", "CrossModal", "WiSEFT",
                  "CLIPAdapter", "LPPP", "GDA", "ProKeR", "SAFE", "CoOp")


@pytest.fixture(scope="module")
def openclip_vit_b16(tmp_path_factory):
    """OpenCLIP's ViT-B-16 with random weights, as ``openclip:ViT-B-16:<file>`` (149,620,737 params)."""
    open_clip = pytest.importorskip("open_clip")
    path = str(tmp_path_factory.mktemp("openclip_b16") / "vit_b16.bin")
    torch.save(open_clip.create_model("ViT-B-16").state_dict(), path)
    return f"openclip:ViT-B-16:{path}"


@pytest.mark.realsize
@pytest.mark.parametrize("trainer", OPENCLIP_CASES)
def test_every_openclip_method_at_real_size(trainer, openclip_vit_b16, realsize_root, weights_dir, tmp_path):
    """One training step and one eval batch at 224 px, 100 classes, on a real-size OpenCLIP ViT."""
    from fsclip.kit.realsize import real_size_trainer

    opts = ["MODEL.BACKBONE.NAME", openclip_vit_b16] + (["TRAINER.SAFE.GRID_BATCHED", False] if trainer == "SAFE" else [])
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        t = real_size_trainer(trainer, "ViT-B/16", "fp32", realsize_root, weights_dir, str(tmp_path / "run"), DEVICE,
                              opts=opts)
        t.train()
    acc = [float(a) for a in re.findall(r"^\* accuracy: ([\d.]+)%$", buf.getvalue(), re.M)]
    assert acc and 0.0 <= acc[-1] <= 100.0, buf.getvalue()[-2000:]
    assert t.backbone.family != "openai" and t.dm.num_classes == 100
