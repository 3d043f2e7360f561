"""ImageNetV2 (matched-frequency), test only, in ImageNet's label space."""

from typing import List

from fsclip.backend import DATASET_REGISTRY

from .imagenet import ImageNetShift


@DATASET_REGISTRY.register()
class ImageNetV2(ImageNetShift):
    """``imagenetv2-matched-frequency-format-val/<k>/``: folder ``k`` is ImageNet label k."""

    dataset_dir = "imagenetv2"
    image_subdir = "imagenetv2-matched-frequency-format-val"

    def folder_names(self, wnids: List[str]) -> List[str]:
        return [str(label) for label in range(len(wnids))]
