"""The backend switch: bundled engine, real Dassl when importable, FSCLIP_BACKEND override."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

FAKE_DASSL = {
    "dassl/__init__.py": "",
    "dassl/config/__init__.py": """
        from yacs.config import CfgNode as CN
        def get_cfg_default():
            c = CN(); c.TRAINER = CN(); c.TRAINER.NAME = "FAKE"; return c
    """,
    "dassl/engine/__init__.py": """
        class Registry:
            def __init__(self): self.d = {}
            def register(self, obj=None):
                def deco(o): self.d[o.__name__] = o; return o
                return deco if obj is None else deco(obj)
            def registered_names(self): return list(self.d)
            def get(self, n): return self.d[n]
            def __contains__(self, n): return n in self.d
        TRAINER_REGISTRY = Registry()
        class TrainerX:
            FROM_FAKE_DASSL = True
        def build_trainer(cfg): return TRAINER_REGISTRY.get(cfg.TRAINER.NAME)(cfg)
    """,
    "dassl/data/__init__.py": "",
    "dassl/data/datasets/__init__.py": """
        from dassl.engine import Registry
        DATASET_REGISTRY = Registry()
        class Datum: pass
        class DatasetBase: FROM_FAKE_DASSL = True
    """,
}

PROBE = textwrap.dedent("""
    import fsclip.backend as b
    print("BACKEND", b.BACKEND)
    import fsclip.trainers, fsclip.engine.compat
    from dassl.engine import TRAINER_REGISTRY as DR
    print("IN_DASSL_REGISTRY", "ZeroshotCLIP" in DR)
    print("SUBCLASS", getattr(b.TrainerX, "FROM_FAKE_DASSL", False),
          issubclass(b.TrainerX, fsclip.engine.compat.DasslCompatMixin))
""")


@pytest.fixture
def fake_dassl(tmp_path):
    for rel, text in FAKE_DASSL.items():
        path = tmp_path / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
    return tmp_path


def _run(code, pythonpath, backend):
    env = dict(os.environ, PYTHONPATH=str(pythonpath), FSCLIP_BACKEND=backend)
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)


def test_auto_uses_real_dassl_when_importable(fake_dassl):
    res = _run(PROBE, fake_dassl, "auto")
    assert res.returncode == 0, res.stderr
    assert "BACKEND dassl" in res.stdout
    assert "IN_DASSL_REGISTRY True" in res.stdout
    assert "SUBCLASS True True" in res.stdout


def test_bundled_can_be_forced(fake_dassl):
    res = _run("import fsclip.backend as b; print('BACKEND', b.BACKEND, b.TrainerX.__module__)", fake_dassl, "bundled")
    assert res.returncode == 0, res.stderr
    assert "BACKEND bundled fsclip.engine.trainer" in res.stdout


def test_forcing_dassl_without_it_is_a_clear_error(tmp_path):
    res = _run("import fsclip.backend", tmp_path, "dassl")
    assert res.returncode != 0 and "FSCLIP_BACKEND=dassl" in res.stderr
    res = _run("import fsclip.backend", tmp_path, "maybe")
    assert res.returncode != 0 and "FSCLIP_BACKEND='maybe' is not valid" in res.stderr


@pytest.mark.skipif(bool(os.environ.get("FSCLIP_BACKEND")), reason="FSCLIP_BACKEND is set")
def test_default_backend_here_is_bundled():
    import fsclip.backend as b
    assert b.BACKEND == "bundled"
