"""ImageNet-R (renditions), test only: 200 ImageNet classes."""

from fsclip.backend import DATASET_REGISTRY

from .imagenet import ImageNetShift


@DATASET_REGISTRY.register()
class ImageNetR(ImageNetShift):
    """``imagenet-r/<wnid>/`` for a subset of ImageNet's classes (200); labels are ImageNet's
    and ``label_subset`` lists the covered ones."""

    dataset_dir = "imagenet-rendition"
    image_subdir = "imagenet-r"
    require_all_classes = False
