"""A synthetic output tree for the results tests: logs in the trainer's printed format, laid
out as the scripts lay them out, with a crashed run, missing seeds and a missing dataset.

    python tests/results_tree.py DIR     # write the three trees under DIR (README example)
"""

from __future__ import annotations

import os
import sys
from typing import Dict, Optional, Sequence

TOTAL = 1000  # test images: accuracy = correct / 10, printed with one decimal as the evaluator does


def result_block(acc: float) -> str:
    """What ``Classification.evaluate`` prints (fsclip/engine/evaluator.py)."""
    correct = round(acc * TOTAL / 100)
    return ("=> result\n"
            f"* total: {TOTAL:,}\n"
            f"* correct: {correct:,}\n"
            f"* accuracy: {100.0 * correct / TOTAL:.1f}%\n"
            f"* error: {100.0 - 100.0 * correct / TOTAL:.1f}%\n"
            f"* macro_f1: {100.0 * correct / TOTAL - 1.5:.1f}%\n")


def write_log(folder: str, acc: Optional[float], trainer: str = "SAFE", cfg: str = "rn50",
              dataset: str = "caltech101", seed: int = 1, eval_only: bool = False,
              crashed: bool = False) -> None:
    """``folder/log.txt`` as train.py writes it: arguments, config, training (unless
    eval_only), the final test result; a crashed run stops with a traceback mid-training."""
    os.makedirs(folder, exist_ok=True)
    text = ("***************\n** Arguments **\n***************\nbackbone: \n"
            f"config_file: configs/trainers/{trainer}/{cfg}.yaml\n"
            f"dataset_config_file: configs/datasets/{dataset}.yaml\n"
            f"eval_only: {eval_only}\nhead: \nload_epoch: None\n"
            f"model_dir: {'output/model' if eval_only else ''}\nno_train: False\n"
            f"opts: []\noutput_dir: {folder}\nresume: \nroot: ./data\nseed: {seed}\n"
            f"trainer: {trainer}\n************\n** Config **\n************\n"
            f"OUTPUT_DIR: {folder}\nSEED: {seed}\n"
            f"Loading trainer: {trainer}\nLoading dataset: {dataset}\n")
    if not eval_only:
        text += ("epoch [1/2] batch [5/5] time 0.123 (0.456) data 0.001 (0.050) loss 1.2345 "
                 "(1.3456) acc 62.5000 (55.0000) lr 1.0000e-05 eta 0:01:23\n"
                 "Evaluate on the *val* set\n" + result_block(55.0))
        if crashed:
            text += ("Traceback (most recent call last):\n  File \"train.py\", line 9, in <module>\n"
                     "RuntimeError: CUDA out of memory.\n")
        else:
            text += "Finish training\nDeploy the model with the best val performance\n"
    if not crashed:
        text += "Evaluate on the *test* set\n" + result_block(acc) + "Elapsed: 0:00:13\n"  # type: ignore[arg-type]
    with open(os.path.join(folder, "log.txt"), "w") as f:
        f.write(text)


def seed_runs(base: str, accs: Sequence[Optional[float]], trainer: str, cfg: str, dataset: str,
              eval_only: bool = False, seeds: Sequence[int] = (1, 2, 3)) -> None:
    """``base/seed<S>`` for each seed; an accuracy of None is a crashed run."""
    for seed, acc in zip(seeds, accs):
        write_log(os.path.join(base, f"seed{seed}"), acc, trainer, cfg, dataset, seed,
                  eval_only=eval_only, crashed=acc is None)


def zero_shot(folder: str, acc: float, dataset: str, cfg: str = "rn50") -> None:
    write_log(folder, acc, "ZeroshotCLIP", cfg, dataset, eval_only=True)


# method -> dataset -> shots -> accuracies of seeds 1, 2, 3 (None: crashed; shorter: seed absent)
FEWSHOT: Dict[str, Dict[str, Dict[int, list]]] = {
    "SAFE": {"caltech101": {1: [88.0, 89.0, 90.0], 4: [91.0, 92.0, 93.0]},
             "oxford_pets": {1: [86.0, None, 88.0], 4: [89.0, 90.0, 91.0]},
             "dtd": {1: [50.0, 52.0, 54.0], 4: [60.0, 63.0, 66.0]}},
    "TipAdapterF": {"caltech101": {1: [89.0, 89.0, 89.0], 4: [90.0, 91.0, 92.0]},
                    "oxford_pets": {4: [90.0, 91.0, 92.0]},  # 1 shot never ran
                    "dtd": {1: [48.0, 49.0, 50.0], 4: [58.0, 60.0]}},  # 4 shots: no seed3
}
ZERO_SHOT = {"caltech101": 86.3, "oxford_pets": 85.8, "dtd": 42.3}


def make_fewshot_tree(root: str) -> None:
    """<dataset>/<Trainer>/rn50_<N>shots/seed<S> and <dataset>/ZeroshotCLIP/rn50."""
    for trainer, per_dataset in FEWSHOT.items():
        for dataset, per_shots in per_dataset.items():
            for shots, accs in per_shots.items():
                seed_runs(os.path.join(root, dataset, trainer, f"rn50_{shots}shots"), accs,
                          trainer, "rn50", dataset)
    for dataset, acc in ZERO_SHOT.items():
        zero_shot(os.path.join(root, dataset, "ZeroshotCLIP", "rn50"), acc, dataset)


OOD_TARGETS = {"imagenetv2": 53.3, "imagenet_sketch": 35.4, "imagenet_a": 21.7, "imagenet_r": 56.0}
OOD = {  # method -> dataset -> accuracies of seeds 1, 2, 3 (source imagenet, 16 shots)
    "SAFE": {"imagenet": [66.0, 66.5, 67.0], "imagenetv2": [57.0, 58.0, 59.0],
             "imagenet_sketch": [36.0, 37.0, 38.0], "imagenet_a": [22.0, 23.0, 24.0],
             "imagenet_r": [59.0, 60.0, 61.0]},
    "TipAdapterF": {"imagenet": [65.5] * 3, "imagenetv2": [58.5] * 3,
                    "imagenet_sketch": [34.3] * 3, "imagenet_a": [20.0, None, 22.0],
                    "imagenet_r": [57.0] * 3},
}


def make_ood_tree(root: str) -> None:
    """imagenet/<Trainer>/rn50_16shots/seed<S>, then
    evaluation/<target>/<Trainer>/rn50_16shots_from_imagenet/seed<S>, and zero-shot runs."""
    for trainer, per_dataset in OOD.items():
        for dataset, accs in per_dataset.items():
            if dataset == "imagenet":
                seed_runs(os.path.join(root, "imagenet", trainer, "rn50_16shots"), accs,
                          trainer, "rn50", dataset)
            else:
                seed_runs(os.path.join(root, "evaluation", dataset, trainer,
                                       "rn50_16shots_from_imagenet"), accs, trainer, "rn50",
                          dataset, eval_only=True)
    for dataset, acc in {"imagenet": 60.3, **OOD_TARGETS}.items():
        zero_shot(os.path.join(root, dataset, "ZeroshotCLIP", "rn50"), acc, dataset)


B2N = {  # method -> dataset -> (base accuracies, new accuracies) over seeds 1, 2, 3
    "CoCoOp": {"caltech101": ([97.8, 98.0, 98.2], [93.6, 93.8, 94.0]),
               "dtd": ([77.0] * 3, [56.0] * 3)},
    "CoOp": {"caltech101": ([98.0] * 3, [89.8] * 3),
             "dtd": ([79.4] * 3, [41.0, 43.0])},  # new classes: no seed3
}
B2N_ZERO_SHOT = {"caltech101": (96.8, 94.0), "dtd": (53.2, 59.9)}


def make_base2new_tree(root: str) -> None:
    """base2new/train_base|test_new/<dataset>/<Trainer>/vit_b16_16shots/seed<S> (and zero-shot)."""
    for trainer, per_dataset in B2N.items():
        for dataset, (base, new) in per_dataset.items():
            for side, accs, eval_only in (("train_base", base, False), ("test_new", new, True)):
                seed_runs(os.path.join(root, "base2new", side, dataset, trainer,
                                       "vit_b16_16shots"), accs, trainer, "vit_b16", dataset,
                          eval_only=eval_only)
    for dataset, (base, new) in B2N_ZERO_SHOT.items():
        for side, acc in (("train_base", base), ("test_new", new)):
            zero_shot(os.path.join(root, "base2new", side, dataset, "ZeroshotCLIP", "vit_b16"),
                      acc, dataset, "vit_b16")


XD = {  # method -> target -> accuracies of seeds 1, 2, 3 (source imagenet, 16 shots, vit_b16)
    "CoOp": {"imagenet": [71.0, 71.5, 72.0], "caltech101": [93.0, 93.5, 94.0],
             "oxford_pets": [89.0] * 3, "dtd": [41.0, 42.0, 43.0], "imagenetv2": [64.0] * 3},
    "CoCoOp": {"imagenet": [71.0] * 3, "caltech101": [94.0] * 3, "oxford_pets": [90.0] * 3,
               "dtd": [45.0, 45.5]},  # dtd: no seed3
}
XD_ZERO_SHOT = {"imagenet": 66.7, "caltech101": 93.3, "oxford_pets": 89.1, "dtd": 44.5,
                "imagenetv2": 60.8}
# the kit's case: trained on SynthShapes (4 shots), evaluated on SynthTextures (other classes)
XD_KIT = {"CoOp": {"synth_shapes": [80.0, 82.0, 84.0], "synth_textures": [30.0, 33.0, 36.0]}}


def make_xd_tree(root: str, kit: bool = False) -> None:
    """Cross-dataset runs as xd_train.sh / xd_test.sh lay them out: imagenet/<Trainer>/
    vit_b16_16shots/seed<S> and evaluation/<target>/<Trainer>/vit_b16_16shots_from_imagenet/
    seed<S> for three of the ten targets (and ImageNet-V2, a distribution-shift target) and
    zero-shot runs; with ``kit`` the kit's synth_shapes -> synth_textures at 4 shots instead."""
    for source, shots, cfg, methods in ([("synth_shapes", 4, "micro_vit", XD_KIT)] if kit
                                        else [("imagenet", 16, "vit_b16", XD)]):
        for trainer, per_dataset in methods.items():
            for dataset, accs in per_dataset.items():
                if dataset == source:
                    seed_runs(os.path.join(root, source, trainer, f"{cfg}_{shots}shots"), accs,
                              trainer, cfg, dataset)
                else:
                    seed_runs(os.path.join(root, "evaluation", dataset, trainer,
                                           f"{cfg}_{shots}shots_from_{source}"), accs, trainer, cfg,
                              dataset, eval_only=True)
    for dataset, acc in ({} if kit else XD_ZERO_SHOT).items():
        zero_shot(os.path.join(root, dataset, "ZeroshotCLIP", "vit_b16"), acc, dataset, "vit_b16")


if __name__ == "__main__":
    out = sys.argv[1] if len(sys.argv) > 1 else "output_synthetic"
    make_fewshot_tree(out)
    make_ood_tree(out)
    make_base2new_tree(out)
    make_xd_tree(os.path.join(out, "xd"))
    make_xd_tree(os.path.join(out, "xd_kit"), kit=True)
    print(f"Synthetic output tree written to {out}")
