"""Checkpoint I/O shared by our TrainerBase and by Dassl's TrainerX under the dassl backend.

Dassl's own ``load_model`` fails on torch >= 2.6 (weights-only loading) and when
``val_result`` is None; these replacements keep its printed lines and file layout.
"""

from __future__ import annotations

import os
import os.path as osp
import re
from collections import OrderedDict
from typing import Dict, Optional, Sequence, Tuple

from ..errors import ConfigError
from .checkpoint import load_checkpoint, resume_from_checkpoint

_EPOCH_FILE = re.compile(r"^model\.pth\.tar-(\d+)$")


def default_epoch(folder: str) -> Optional[int]:
    """Which epoch ``load_model`` takes without ``--load-epoch``: None (``model-best.pth.tar``) when
    that file exists, else the epoch the ``checkpoint`` pointer names, else the latest one saved."""
    if osp.exists(osp.join(folder, "model-best.pth.tar")):
        return None
    try:
        with open(osp.join(folder, "checkpoint"), encoding="utf-8") as f:
            match = _EPOCH_FILE.match(f.readline().strip())
        if match:
            return int(match.group(1))
    except OSError:
        pass
    try:
        epochs = [int(m.group(1)) for m in map(_EPOCH_FILE.match, os.listdir(folder)) if m]
    except OSError:
        return None
    return max(epochs) if epochs else None


def _state_dict_problems(err: RuntimeError) -> str:
    """torch's load_state_dict error in one line (its detail lines joined)."""
    lines = [l.strip().rstrip(".") for l in str(err).splitlines()[1:] if l.strip()]
    return "; ".join(lines[:4]) if lines else str(err).strip()


class DasslCompatMixin:
    """``load_model`` and ``resume_model_if_exist`` over ``self._models/_optims/_scheds``."""

    def resume_model_if_exist(self, directory: str) -> int:
        names = self.get_model_names()
        if any(not osp.exists(osp.join(directory, name, "checkpoint")) for name in names):
            print("No checkpoint found, train from scratch")
            return 0
        print(f"Found checkpoint at {directory} (will resume training)")
        start_epoch = 0
        for name in names:
            start_epoch = resume_from_checkpoint(
                osp.join(directory, name), self._models[name], self._optims[name], self._scheds[name]
            )
        return start_epoch

    def load_model(self, directory: str, epoch: Optional[int] = None) -> None:
        """Load ``model.pth.tar-<epoch>`` of every registered model; without ``epoch``,
        ``model-best.pth.tar``, else the file the ``checkpoint`` pointer names, else the latest
        ``model.pth.tar-N`` (runs that selected no best model). A model folder missing under its
        own name is looked for under the names of :meth:`official_model_folders`."""
        if not directory:
            print("Note that load_model() is skipped as no pretrained model is given "
                  "(ignore this if it's done on purpose)")
            return
        for name in self.get_model_names():
            folder, rename = self.model_folder(directory, name)
            chosen = epoch if epoch is not None else default_epoch(folder)
            model_file = "model-best.pth.tar" if chosen is None else f"model.pth.tar-{chosen}"
            model_path = osp.join(folder, model_file)
            if not osp.exists(model_path):
                raise FileNotFoundError(
                    f"No model at {model_path}. Check --model-dir (the run's output folder) and "
                    f"--load-epoch (omit it to load model-best.pth.tar)"
                )
            checkpoint = load_checkpoint(model_path)
            state_dict = checkpoint["state_dict"]
            if rename:
                state_dict = OrderedDict((rename.get(k, k), v) for k, v in state_dict.items())
            ck_epoch = checkpoint.get("epoch")
            val_result = checkpoint.get("val_result")
            shown = "None" if val_result is None else f"{val_result:.1f}"
            print(f"Load {model_path} to {name} (epoch={ck_epoch}, val_result={shown})")
            try:
                self._models[name].load_state_dict(state_dict, strict=self.strict_state_dict(name))
            except RuntimeError as err:  # shapes or keys that do not fit this run's model
                raise ConfigError(
                    f"The saved {name} in {model_path} does not fit this run's {name}: "
                    f"{_state_dict_problems(err)}. Evaluate it with the settings it was trained with "
                    f"(dataset and classes, DATASET.NUM_SHOTS, backbone and the method's keys: see "
                    f"config.yaml in {directory})") from None

    def model_folder(self, directory: str, name: str) -> Tuple[str, Dict[str, str]]:
        """The folder of model ``name`` under ``directory`` and the state-dict key renames to apply
        (another code base's folder name, when only that one exists)."""
        folder = osp.join(directory, name)
        if not osp.isdir(folder):
            for alias, rename in self.official_model_folders().get(name, ()):
                if osp.isdir(osp.join(directory, alias)):
                    print(f"Loading {name} from {alias}/ (the official code's layout)")
                    return osp.join(directory, alias), dict(rename)
        return folder, {}

    def official_model_folders(self) -> Dict[str, Sequence[Tuple[str, Dict[str, str]]]]:
        """``{model name: [(folder name of the official code, {its key: our key}), ...]}``
        (override where the official code names a model's folder or keys otherwise)."""
        return {}

    def restrict_logits(self, logits):
        """Mask classes outside the dataset's ``label_subset`` (ImageNet-A/R cover 200 of
        ImageNet's 1000 labels and are evaluated among those only)."""
        subset = getattr(getattr(getattr(self, "dm", None), "dataset", None), "label_subset", None)
        if not subset:
            return logits
        mask = logits.new_full((logits.shape[-1],), float("-inf"))
        mask[list(subset)] = 0
        return logits + mask

    def strict_state_dict(self, name: str) -> bool:
        """Whether loading ``name`` requires every key (override for partial state dicts)."""
        return True
