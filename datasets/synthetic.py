"""The offline kit's synthetic benchmark as registered datasets.

``SynthShapes`` (10 classes, each with a colour and a shape of its own, e.g. "red circle";
palette-shifted photos), ``SynthTextures`` (20 classes: 4 colours x 5 fill textures, each
texture on a shape of its own, e.g. "red striped square"; finer patterns than in pretraining)
and ``SynthShapesSketch`` (SynthShapes' classes drawn as coloured outlines on paper; test
only, for the distribution-shift scripts, like ImageNet-Sketch for ImageNet).

They read ``DATASET.ROOT/<dataset_dir>`` exactly like the real benchmarks (CoOp layout,
``split_zhou_<Name>.json``, few-shot picks cached as JSON, SUBSAMPLE_CLASSES), and when the
folder is missing or incomplete they generate it there first (a few seconds; see
``fsclip.kit.synth``). An empty DATASET.ROOT means ``$FSCLIP_DATA`` or
``~/.cache/fsclip/data``.
"""

from __future__ import annotations

import os
import os.path as osp

from fsclip.backend import DATASET_REGISTRY, Datum
from fsclip.kit import synth

from .common import SplitFileDataset


def default_root() -> str:
    return os.environ.get("FSCLIP_DATA") or osp.join(osp.expanduser("~"), ".cache", "fsclip",
                                                      "data")


class _Synthetic(SplitFileDataset):
    """Generate the data under DATASET.ROOT if needed, then read it like any split-file set."""

    image_subdir = "images"
    template = synth.TEMPLATE
    templates = list(synth.TEMPLATES)

    @classmethod
    def section(cls) -> str:
        return "synthetic"

    def _generate(self, cfg) -> None:
        name = type(self).__name__
        root = cfg.DATASET.ROOT or default_root()
        synth.ensure_dataset(root, name, synth.DEFAULT_SEED)
        if not cfg.DATASET.ROOT:
            print(f"DATASET.ROOT is empty: using {root}")
            self._root_override = root

    def locate(self, cfg, folder=None):
        root = getattr(self, "_root_override", None)
        if root is not None:
            folder = osp.join(osp.abspath(root), type(self).dataset_dir)
        return super().locate(cfg, folder)

    def __init__(self, cfg) -> None:
        self._generate(cfg)
        super().__init__(cfg)


@DATASET_REGISTRY.register()
class SynthShapes(_Synthetic):
    """10 classes defined by shape and colour, in cluttered scenes."""

    dataset_dir = synth.DATASETS["SynthShapes"].dataset_dir


@DATASET_REGISTRY.register()
class SynthTextures(_Synthetic):
    """20 classes defined by shape and fill texture, in cluttered scenes."""

    dataset_dir = synth.DATASETS["SynthTextures"].dataset_dir


@DATASET_REGISTRY.register()
class SynthShapesSketch(_Synthetic):
    """SynthShapes' 10 classes as coloured outline drawings; test only (as CoOp's
    ImageNet-Sketch: ``train_x`` and ``test`` are the same images; NUM_SHOTS and
    SUBSAMPLE_CLASSES do not apply). Labels equal SynthShapes' labels."""

    dataset_dir = synth.DATASETS["SynthShapesSketch"].dataset_dir

    def __init__(self, cfg) -> None:
        self._generate(cfg)
        dataset_dir = self.locate(cfg)
        self.image_dir = osp.join(dataset_dir, self.image_subdir)
        self.split_path = osp.join(dataset_dir, self.split_file())
        self.require_file(self.split_path, "split file not found")
        rows = self.read_split(self.split_path)
        test = [Datum(impath=p, label=y, classname=c) for p, y, c in rows["test"]]
        self.check_labels(test, source=self.split_path)
        super(SplitFileDataset, self).__init__(train_x=test, test=test)
