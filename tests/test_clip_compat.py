"""fsclip.clip.compat.import_clip: ``import clip`` without pkg_resources (setuptools >= 82).

The state under test is sys.modules itself, so the cases run in one fresh interpreter (one
torch import), each starting from a sys.modules without clip.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SCRIPT = """
import sys, types

def forget_clip():
    for name in [n for n in sys.modules if n == "clip" or n.startswith("clip.")]:
        del sys.modules[name]

# 1. no pkg_resources and no packaging: the stand-in version parser
sys.modules["pkg_resources"] = None  # "import pkg_resources" now raises ImportError
saved_packaging = {n: m for n, m in sys.modules.items() if n.split(".")[0] == "packaging"}
for name in saved_packaging:
    del sys.modules[name]
sys.modules["packaging"] = None
try:
    import clip
except ImportError:
    print("plain-import-fails")
forget_clip()
from fsclip.clip.compat import import_clip
clip = import_clip()
assert import_clip() is clip  # idempotent
assert clip.tokenize("a dog").shape == (1, 77)
assert "RN50" in clip.available_models()
assert sys.modules["pkg_resources"] is None  # put back as it was
parse = clip.clip.packaging.version.parse
assert parse("2.14.1+cpu") > parse("1.7.1") and parse("1.7") < parse("1.7.1")
print("standin-parser-ok")

# 2. no pkg_resources, real packaging installed: it is used
del sys.modules["packaging"]
sys.modules.update(saved_packaging)
forget_clip()
clip = import_clip()
import packaging.version
assert clip.clip.packaging.version is packaging.version
assert sys.modules["pkg_resources"] is None
print("real-packaging-ok")

# 3. a working pkg_resources is left alone
fake = types.ModuleType("pkg_resources")
fake.packaging = types.SimpleNamespace(version=packaging.version)
sys.modules["pkg_resources"] = fake
forget_clip()
clip = import_clip()
assert sys.modules["pkg_resources"] is fake
assert clip.clip.packaging is fake.packaging
print("pkg-resources-untouched-ok")
"""


def test_import_clip_without_pkg_resources():
    env = dict(os.environ)
    env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(SCRIPT)], capture_output=True,
                            text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.split() == [
        "plain-import-fails", "standin-parser-ok", "real-packaging-ok", "pkg-resources-untouched-ok",
    ]


def test_importing_fsclip_clip_is_light():
    code = ("import sys, fsclip.clip as c; assert 'torch' not in sys.modules and 'clip' not in sys.modules; "
            "assert 'load_clip' in c.__all__; print('light')")
    env = dict(os.environ)
    env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                            timeout=120)
    assert result.returncode == 0 and result.stdout.strip() == "light", result.stderr
