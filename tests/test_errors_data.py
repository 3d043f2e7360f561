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


def test_read_only_data_folder_points_to_fewshot_dir_which_then_works(world, capsys, tmp_path, monkeypatch):  # noqa: F811
    """The few-shot split file cannot go beside the images (a read-only mount: EROFS, which chmod
    cannot simulate for root): the ERROR line names DATASET.FEWSHOT_DIR, and with it set the same
    run succeeds without writing anything into the data folder."""
    import os

    import fsclip.engine.data.base as base

    data = tmp_path / "data"
    make_custom(str(data), {"cat": 6, "dog": 6})
    real_write = base.atomic_write_text

    def read_only_data(path, text):
        if str(path).startswith(str(data)):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), path)
        real_write(path, text)

    monkeypatch.setattr(base, "atomic_write_text", read_only_data)
    argv = world.argv("ZeroshotCLIP", "DATASET.NAME", "Custom", "DATASET.ROOT", str(data),
                      "DATASET.CUSTOM_DIR", "mine", out=str(tmp_path / "run"))
    line, _ = fail(world, argv, capsys)
    assert "read-only file system" in line and "DATASET.FEWSHOT_DIR" in line
    assert str(data / "mine" / "split_fewshot") in line
    assert main(argv + ["DATASET.FEWSHOT_DIR", str(tmp_path / "splits")]) == 0
    assert (tmp_path / "splits" / "mine" / "shot_2-seed_1.json").is_file()
    assert not (data / "mine" / "split_fewshot").exists() or not any((data / "mine" / "split_fewshot").iterdir())
