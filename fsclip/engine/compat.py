"""Checkpoint I/O shared by our TrainerBase and by Dassl's TrainerX under the dassl backend.

Dassl's own ``load_model`` fails on torch >= 2.6 (weights-only loading) and when
``val_result`` is None; these replacements keep its printed lines and file layout.
"""

from __future__ import annotations

import os.path as osp
from typing import Optional

from .checkpoint import load_checkpoint, resume_from_checkpoint


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
        """Load ``model-best.pth.tar`` (or ``model.pth.tar-<epoch>``) of every registered model."""
        if not directory:
            print("Note that load_model() is skipped as no pretrained model is given "
                  "(ignore this if it's done on purpose)")
            return
        names = self.get_model_names()
        model_file = "model-best.pth.tar" if epoch is None else f"model.pth.tar-{epoch}"
        for name in names:
            model_path = osp.join(directory, name, model_file)
            if not osp.exists(model_path):
                raise FileNotFoundError(
                    f"No model at {model_path}. Check --model-dir (the run's output folder) and "
                    f"--load-epoch (omit it to load model-best.pth.tar)"
                )
            checkpoint = load_checkpoint(model_path)
            state_dict = checkpoint["state_dict"]
            ck_epoch = checkpoint["epoch"]
            val_result = checkpoint.get("val_result")
            shown = "None" if val_result is None else f"{val_result:.1f}"
            print(f"Load {model_path} to {name} (epoch={ck_epoch}, val_result={shown})")
            self._models[name].load_state_dict(state_dict, strict=self.strict_state_dict(name))

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
