"""train.py's failure behaviour for data, image, prompt and cache faults (issue 22): one ERROR line
in the terminal and log.txt, exit code 2, nothing written before touched; a cache that cannot be
written is not a failure. Uses test_errors.py's toy world (tiny CLIP, toy dataset, a finished run).
"""

from __future__ import annotations

import errno
import json
import os.path as osp

from test_errors import fail, make_custom, world  # noqa: F401  (world: the module's fixture)

from fsclip.cli import main


def test_prompt_file_with_an_empty_prompt_is_refused(world, capsys, tmp_path):  # noqa: F811
    prompts = tmp_path / "prompts.json"
    prompts.write_text(json.dumps({"red square": ["a red square."], "green circle": ["a green circle.", "  "],
                                   "blue bar": ["a blue bar."]}))
    argv = world.argv("ZeroshotCLIP", "TRAINER.ZSCLIP.TEMPLATES", str(prompts), out=str(tmp_path / "zs"))
    line, _ = fail(world, argv, capsys)
    assert line == (f'ERROR: Prompt file {prompts}: prompt 2 of 2 for class "green circle" is empty; '
                    "write the prompt or remove it from the list")
    with open(tmp_path / "zs" / "log.txt") as f:
        assert f.read().splitlines()[-1] == line


def test_custom_dataset_of_one_class_is_refused(world, capsys, tmp_path):  # noqa: F811
    make_custom(str(tmp_path), {"cat": 10})
    argv = world.argv("ZeroshotCLIP", "DATASET.NAME", "Custom", "DATASET.ROOT", str(tmp_path),
                      "DATASET.CUSTOM_DIR", "mine", out=str(tmp_path / "run"))
    line, _ = fail(world, argv, capsys)
    assert "needs at least 2 classes, found 1 class ('cat')" in line
    assert osp.join(str(tmp_path), "mine") in line
