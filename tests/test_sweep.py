"""fsclip-sweep: the grid expands into the scripts' runs; local workers (failures reported, a
killed sweep resumed), the Slurm path through submitit, a shared feature cache."""

from __future__ import annotations

import io
import json
import os
import os.path as osp
import re
import signal
import subprocess
import sys
import time

import pytest
import yaml

from fsclip.clip.loader import kit_model_names
from fsclip.kit.synth import ensure_dataset
from fsclip.sweep.cli import main as sweep_main
from fsclip.sweep.execute import Outcome
from fsclip.sweep.grid import Grid, Method, Run, expand, registered_trainers
from fsclip.sweep.local import worker_envs
from fsclip.sweep.progress import Progress

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
needs_kit = pytest.mark.skipif("MicroRN" not in kit_model_names(), reason="kit weights missing")

RECORDER = """
import json, os, sys
if sys.argv[1] == "train.py":  # record the run instead of training
    with open(os.environ["RECORD"], "a") as f:
        f.write(json.dumps(sys.argv[2:]) + "\\n")
    sys.exit(0)
if sys.argv[1] == "parse_test_res.py":
    sys.exit(0)
os.execv(sys.executable, [sys.executable] + sys.argv[1:])
"""


def script_runs(tmp_path, script: str, *args: str, **env) -> list:
    """The train.py argument lists ``bash scripts/<script> args`` runs (train.py recorded, not run)."""
    record = tmp_path / f"record-{len(list(tmp_path.iterdir()))}.jsonl"
    (tmp_path / "recorder.py").write_text(RECORDER)
    full_env = dict(os.environ, PYTHON=f"{sys.executable} {tmp_path / 'recorder.py'}", RECORD=str(record),
                    DATA="/kit/data", OUTPUT=str(tmp_path / "output"), **env)
    proc = subprocess.run(["bash", osp.join("scripts", script), *args], cwd=REPO, env=full_env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    return [json.loads(line) for line in record.read_text().splitlines()]


def method_scripts() -> dict:
    """{trainer: script} for every scripts/<method>/main.sh (the trainer its fewshot_main names)."""
    found = {}
    for name in sorted(os.listdir(osp.join(REPO, "scripts"))):
        path = osp.join(REPO, "scripts", name, "main.sh")
        if osp.isfile(path):
            match = re.search(r"^fewshot_main (\S+)", open(path).read(), re.M)
            if not match.group(1).startswith('"$'):  # scripts taking the trainer as an argument (dpt) test their own
                found[match.group(1)] = f"{name}/main.sh"
    return found


def test_expansion_gives_exactly_the_runs_of_every_method_script(tmp_path):
    trainers = registered_trainers()
    scripts = method_scripts()
    assert {"SAFE", "TipAdapter"} <= set(scripts)
    opts = ("OPTIM.LR", "0.5", "TRAINER.FEATURES.CACHE_DIR", "/f")
    for trainer, script in scripts.items():
        # the kit config it has (ViT-only methods: micro_vit)
        kit = "micro_rn" if osp.isfile(osp.join(REPO, "configs", "trainers", trainer, "micro_rn.yaml")) else "micro_vit"
        grid = Grid([Method(trainer, kit)], ["synth_shapes"], shots=[1, 2], seeds=[1, 2], opts=opts,
                    data="/kit/data", output=str(tmp_path / "output"))
        expected = [list(r.argv) for r in expand(grid, trainers, cwd=REPO)]
        got = [argv for shots in ("1", "2")
               for argv in script_runs(tmp_path, script, "synth_shapes", shots, kit, *opts, SEEDS="1 2")]
        assert got == expected, script
        assert [r.out_dir for r in expand(grid, trainers, cwd=REPO)][:2] == [
            str(tmp_path / "output" / "synth_shapes" / trainer / f"{kit}_1shots" / f"seed{s}") for s in (1, 2)]
    # a tag (the scripts' CFG_TAG) and zero-shot trainers (shots 0: the zeroshot.sh layout, no seed;
    # ZeroshotCLIP2 has no config folder of its own and uses its base class's, as the script does)
    tagged = Grid([Method("SAFE", "micro_rn", tag="beta0.9")], ["synth_shapes"], shots=[4], seeds=[3],
                  data="/kit/data", output=str(tmp_path / "output"))
    assert [list(r.argv) for r in expand(tagged, trainers, cwd=REPO)] == script_runs(
        tmp_path, "safe/main.sh", "synth_shapes", "4", "micro_rn", SEEDS="3", CFG_TAG="beta0.9")
    for zs in ("ZeroshotCLIP", "ZeroshotCLIP2"):
        grid = Grid([Method(zs, "micro_rn")], ["synth_shapes"], shots=[0], seeds=[1, 2, 3],
                    opts=("TRAINER.ZSCLIP.PREC", "fp32"), data="/kit/data", output=str(tmp_path / "output"))
        runs = expand(grid, trainers, cwd=REPO)
        assert len(runs) == 1 and runs[0].mode == "test"
        assert [list(runs[0].argv)] == script_runs(tmp_path, "zsclip/zeroshot.sh", "synth_shapes", "micro_rn", zs,
                                                   "TRAINER.ZSCLIP.PREC", "fp32")


def test_grid_file_methods_with_their_own_tag_options_and_shots(tmp_path):
    spec = yaml.safe_load("""
methods:
  - SAFE:micro_rn
  - {trainer: TipAdapterF, cfg: micro_rn, tag: lr, opts: [TRAINER.TIP.LR, 0.01]}
  - {trainer: ZeroshotCLIP2, cfg: micro_rn, shots: [0]}
datasets: [synth_shapes]
shots: [1, 4]
seeds: [1]
opts: {TRAINER.FEATURES.TRAIN_VIEWS: 2}
output: out
""")
    runs = expand(Grid.from_mapping(spec), registered_trainers(), cwd=REPO)
    assert [r.label("out") for r in runs] == [
        "synth_shapes/SAFE/micro_rn_1shots/seed1", "synth_shapes/SAFE/micro_rn_4shots/seed1",
        "synth_shapes/TipAdapterF/micro_rn_lr_1shots/seed1", "synth_shapes/TipAdapterF/micro_rn_lr_4shots/seed1",
        "synth_shapes/ZeroshotCLIP2/micro_rn"]
    assert runs[2].argv[-6:] == ("DATASET.NUM_SHOTS", "1", "TRAINER.FEATURES.TRAIN_VIEWS", "2", "TRAINER.TIP.LR", "0.01")
    with pytest.raises(Exception, match='Unknown trainer .*Do you mean "SAFE"'):
        expand(Grid([Method("SAEF")], ["synth_shapes"]), registered_trainers(), cwd=REPO)
    with pytest.raises(Exception, match="Unknown dataset 'synth_shape'"):
        expand(Grid([Method("SAFE", "micro_rn")], ["synth_shape"]), registered_trainers(), cwd=REPO)
    with pytest.raises(Exception, match="it has: .*micro_rn"):
        expand(Grid([Method("SAFE", "rn51")], ["synth_shapes"]), registered_trainers(), cwd=REPO)


def test_finished_runs_of_another_config_are_listed_once_per_change_and_redone_only_with_force(
        tmp_path, monkeypatch, capsys):
    from fsclip.runs import config_text, requested_config

    monkeypatch.chdir(REPO)
    grid = Grid([Method("TipAdapter", "micro_rn")], ["synth_shapes"], shots=[1], seeds=[1, 2, 3, 4],
                data="/kit/data", output=str(tmp_path / "output"))
    runs = expand(grid, registered_trainers(), cwd=REPO)
    finished = "Finish training\n* accuracy: 50.00%\n"
    for run, log, opts in ((runs[0], finished, ("TRAINER.TIP.LR", "0.5")), (runs[1], finished, ("TRAINER.TIP.LR", "0.5")),
                           (runs[2], finished, ()), (runs[3], "Finish training\n", ())):
        os.makedirs(run.out_dir)
        open(osp.join(run.out_dir, "log.txt"), "w").write(log)
        open(osp.join(run.out_dir, "config.yaml"), "w").write(config_text(*requested_config(run.argv + opts)))
    flags = ["--methods", "TipAdapter:micro_rn", "--datasets", "synth_shapes", "--shots", "1", "--seeds", "1", "2",
             "3", "4", "--data", "/kit/data", "--output", str(tmp_path / "output"), "--dry-run"]
    assert sweep_main(flags) == 0
    out = capsys.readouterr().out
    assert "Sweep: 4 run(s); 1 finished with the same config (skipped), 1 to run, 2 finished with another config" in out
    assert "  2 run(s) (synth_shapes/TipAdapter/micro_rn_1shots/seed1, synth_shapes/TipAdapter/micro_rn_1shots/seed2):\n" \
           "    TRAINER.TIP.LR: 0.5 -> 0.001\n" in out
    assert out.count("would run") == 1 and "would run synth_shapes/TipAdapter/micro_rn_1shots/seed4" in out
    assert sweep_main(flags + ["--force"]) == 0
    assert capsys.readouterr().out.count("would run") == 3


@pytest.mark.parametrize("name", sorted(f for f in os.listdir(osp.join(REPO, "configs", "sweeps"))
                                         if f.endswith(".yaml")))
def test_shipped_sweep_grids_expand_to_every_run(name, tmp_path, monkeypatch, capsys):
    """configs/sweeps/*.yaml (the README's demo and paper grids) name trainers, configs and
    datasets that exist: a dry run lists each method x dataset x shots x seed once."""
    monkeypatch.chdir(REPO)
    path = osp.join("configs", "sweeps", name)
    spec = yaml.safe_load(open(path))
    assert sweep_main([path, "--output", str(tmp_path / "output"), "--dry-run"]) == 0
    out = capsys.readouterr().out
    expected = 0
    for m in spec["methods"]:
        shots = m.get("shots", spec["shots"]) if isinstance(m, dict) else spec["shots"]
        expected += len(spec["datasets"]) * sum(1 if s == 0 else len(spec["seeds"]) for s in shots)
    assert out.count("would run") == expected, out[-2000:]


def test_workers_get_one_gpu_each_round_robin_and_share_the_cpu_threads():
    envs = worker_envs(3, ["2", "5"], threads=4)
    assert [e["CUDA_VISIBLE_DEVICES"] for e in envs] == ["2", "5", "2"]
    assert {e["OMP_NUM_THREADS"] for e in envs} == {"4"}
    cpu = worker_envs(2, [])
    assert all("CUDA_VISIBLE_DEVICES" not in e for e in cpu)
    assert int(cpu[0]["OMP_NUM_THREADS"]) == max(1, len(os.sched_getaffinity(0)) // 2)


def test_progress_prints_one_plain_line_per_finished_run_with_counts_and_eta():
    stream = io.StringIO()
    runs = [Run("T", "d", 1, s, f"out/d/T/c_1shots/seed{s}", (), "/") for s in (1, 2, 3)]
    progress = Progress(3, 2, output="out", stream=stream, tty=False)
    t = time.time()
    progress.start(runs[0], t - 10)
    progress.start(runs[1], t - 4)
    progress.finish(Outcome(runs[0], True, 0, 10.0, "out/d/T/c_1shots/seed1/log.txt"))
    progress.finish(Outcome(runs[1], False, 2, 4.0, "out/d/T/c_1shots/seed2/log.txt", "ERROR: bad key"))
    lines = stream.getvalue().splitlines()
    assert lines[0].startswith("[1/3] done    d/T/c_1shots/seed1 (10s)  | done 1  running 1  failed 0  remaining 1")
    assert lines[1:3] == ["[2/3] FAILED  d/T/c_1shots/seed2 (4s)", "    log: out/d/T/c_1shots/seed2/log.txt"]
    assert lines[3].startswith("    ERROR: bad key  | done 1  running 0  failed 1  remaining 1  elapsed ")
    assert lines[3].endswith("ETA 4s") and len(lines) == 4
    assert progress.eta(t) == pytest.approx(7.0 / 2)  # one remaining run of mean 7 s on 2 workers


# ------------------------------------------------------------------- real runs on the kit
def sweep_cmd(grid_file, *flags):
    return [sys.executable, "-m", "fsclip.sweep", str(grid_file), *flags]


def write_grid(path, root, output, cache, methods, seeds=(1,)):
    path.write_text(yaml.safe_dump({
        "methods": methods, "datasets": ["synth_shapes"], "shots": [1], "seeds": list(seeds),
        "opts": ["TRAINER.FEATURES.CACHE_DIR", cache, "USE_CUDA", "False"], "data": root, "output": str(output)}))
    return path


def result_of(log: str) -> bool:
    return bool(re.search(r"^\* accuracy: [\d.]+%$", log.split("Finish training")[-1].split("=> result")[-1], re.M))


def child_processes_mentioning(text: str) -> list:
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if text.encode() in f.read():
                    found.append(int(pid))
        except OSError:
            pass
    return found


@pytest.mark.slow  # end to end over many runs: with the learning tests
@needs_kit
def test_failed_run_is_reported_the_rest_run_and_a_killed_sweep_resumes_only_unfinished_runs(
        kit_root, kit_cache, tmp_path):
    ensure_dataset(kit_root, "SynthShapes")
    out = tmp_path / "output"
    grid = write_grid(tmp_path / "grid.yaml", kit_root, out, kit_cache, [
        {"trainer": "TipAdapter", "cfg": "micro_rn", "tag": "broken",
         "opts": ["TRAINER.FEATURES.PROMPTS", "/nonexistent/prompts.json"]},
        "TipAdapter:micro_rn",
        {"trainer": "ZeroshotCLIP2", "cfg": "micro_rn", "shots": [0]}])
    broken = out / "synth_shapes" / "TipAdapter" / "micro_rn_broken_1shots" / "seed1"
    tip = out / "synth_shapes" / "TipAdapter" / "micro_rn_1shots" / "seed1"
    zs = out / "synth_shapes" / "ZeroshotCLIP2" / "micro_rn"
    first_out = tmp_path / "first.txt"
    with open(first_out, "w") as f:
        sweep = subprocess.Popen(sweep_cmd(grid, "--workers", "1"), cwd=REPO, stdout=f, stderr=subprocess.STDOUT)
    # the failing run comes first and does not stop the others; kill the sweep during the last run
    deadline = time.time() + 900
    while not ((tip / "log.txt").exists() and result_of((tip / "log.txt").read_text())
               and (zs / "log.txt").exists()):
        assert sweep.poll() is None and time.time() < deadline, first_out.read_text()[-3000:]
        time.sleep(0.3)
    sweep.send_signal(signal.SIGTERM)
    assert sweep.wait(60) == 128 + signal.SIGTERM
    first = first_out.read_text()
    assert "Sweep interrupted (SIGTERM)" in first
    assert not child_processes_mentioning(str(zs))  # the running child was stopped with the sweep
    lines = first.splitlines()
    at = next(i for i, line in enumerate(lines) if "FAILED  synth_shapes/TipAdapter/micro_rn_broken_1shots/seed1" in line)
    assert lines[at + 1] == f"    log: {broken / 'log.txt'}"
    assert lines[at + 2].startswith("    ERROR: Prompt file /nonexistent/prompts.json does not exist")
    assert "done    synth_shapes/TipAdapter/micro_rn_1shots/seed1" in first
    assert not result_of((zs / "log.txt").read_text())
    tip_log = (tip / "log.txt").read_text()

    # resumed: only the unfinished runs (the failed one and the killed one) run again
    again = subprocess.run(sweep_cmd(grid, "--workers", "1"), cwd=REPO, capture_output=True, text=True,
                           timeout=900)
    assert again.returncode == 1, again.stdout[-3000:] + again.stderr[-3000:]
    assert "Sweep: 3 run(s); 1 finished with the same config (skipped), 2 to run" in again.stdout
    assert "micro_rn_1shots/seed1 (" not in again.stdout  # the finished run is not run again
    assert (tip / "log.txt").read_text() == tip_log
    assert "done    synth_shapes/ZeroshotCLIP2/micro_rn" in again.stdout
    assert result_of((zs / "log.txt").read_text())
    assert [f for f in os.listdir(zs) if f.startswith("log.txt.crashed-")]  # the killed run's log is kept
    assert "Sweep finished: 1 run(s) done, 1 failed, 1 skipped" in again.stdout
    assert re.search(r"FAILED synth_shapes/TipAdapter/micro_rn_broken_1shots/seed1\n    log: .*\n    ERROR: Prompt file",
                     again.stdout)


@needs_kit
def test_two_workers_on_one_cache_space_extract_each_image_once(kit_root, tmp_path):
    """Two runs of one sweep start together on an empty cache: the test split (the same 300
    images for both seeds) must go through the trunk once, the other run reusing it. Relies on
    the feature cache's per-space extraction lock (fsclip/adapt/cache.py)."""
    ensure_dataset(kit_root, "SynthShapes")
    out = tmp_path / "output"
    grid = write_grid(tmp_path / "grid.yaml", kit_root, out, str(tmp_path / "fresh_cache"),
                      ["TipAdapter:micro_rn"], seeds=(1, 2))
    proc = subprocess.run(sweep_cmd(grid, "--workers", "2"), cwd=REPO, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    logs = [(out / "synth_shapes" / "TipAdapter" / "micro_rn_1shots" / f"seed{s}" / "log.txt").read_text()
            for s in (1, 2)]
    stored = [int(m) for log in logs for m in re.findall(r"stored test features \((\d+),", log)]
    assert stored == [300], stored  # 300 test images, extracted by one run only
    assert sum("300/300 test images reused" in log for log in logs) == 1


@needs_kit
def test_slurm_path_runs_through_submitits_local_executor(kit_root, kit_cache, tmp_path):
    pytest.importorskip("submitit")
    ensure_dataset(kit_root, "SynthShapes")
    out = tmp_path / "output"
    grid = write_grid(tmp_path / "grid.yaml", kit_root, out, kit_cache,
                      [{"trainer": "ZeroshotCLIP", "cfg": "micro_rn", "shots": [0]},
                       {"trainer": "ZeroshotCLIP", "cfg": "micro_rn", "tag": "broken", "shots": [0],
                        "opts": ["TRAINER.ZSCLIP.TEMPLATES", "/nonexistent/prompts.json"]}])
    proc = subprocess.run(sweep_cmd(grid, "--slurm", "--submitit-cluster", "local", "--cpus", "1"),
                          cwd=REPO, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "Submitted 2 run(s) as job" in proc.stdout
    assert "done    synth_shapes/ZeroshotCLIP/micro_rn (" in proc.stdout
    assert re.search(r"FAILED  synth_shapes/ZeroshotCLIP/micro_rn_broken \(.*\)\n    log: .*log.txt\n"
                     r"    ERROR: Prompt file /nonexistent/prompts.json", proc.stdout)
    assert result_of((out / "synth_shapes" / "ZeroshotCLIP" / "micro_rn" / "log.txt").read_text())
    assert (out / ".sweep" / "slurm").is_dir()


def test_slurm_job_array_gets_partition_time_gpus_and_memory_from_the_flags(tmp_path, monkeypatch):
    """Without Slurm: fake sbatch/srun on PATH; the sbatch file submitit writes is checked."""
    pytest.importorskip("submitit")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "sbatch").write_text(f'#!/bin/sh\ncp "$1" {tmp_path}/submitted.sh\necho "Submitted batch job 4242"\n')
    (bin_dir / "srun").write_text("#!/bin/sh\nexit 0\n")
    for f in bin_dir.iterdir():
        f.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.chdir(REPO)
    code = sweep_main(["--methods", "SAFE:micro_rn", "--datasets", "synth_shapes", "synth_textures",
                       "--shots", "1", "2", "--seeds", "1", "--output", str(tmp_path / "output"),
                       "--slurm", "--partition", "gpu", "--time", "120", "--gpus", "2", "--mem", "32",
                       "--cpus", "8", "--array-parallelism", "3", "--slurm-param", "account=lab", "qos=high",
                       "--no-wait"])
    assert code == 0
    sbatch = (tmp_path / "submitted.sh").read_text()
    for line in ("#SBATCH --partition=gpu", "#SBATCH --time=120", "#SBATCH --gpus-per-node=2",
                 "#SBATCH --mem=32GB", "#SBATCH --cpus-per-task=8", "#SBATCH --array=0-3%3",
                 "#SBATCH --account=lab", "#SBATCH --qos=high", "#SBATCH --nodes=1", "#SBATCH --ntasks-per-node=1",
                 "#SBATCH --job-name=fsclip-sweep"):
        assert line in sbatch.splitlines(), (line, sbatch)
