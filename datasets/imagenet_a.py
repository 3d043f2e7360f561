"""ImageNet-A (natural adversarial examples), test only: 200 ImageNet classes."""

from fsclip.backend import DATASET_REGISTRY

from .imagenet import ImageNetShift


@DATASET_REGISTRY.register()
class ImageNetA(ImageNetShift):
    """``imagenet-a/<wnid>/`` for a subset of ImageNet's classes (200); labels are ImageNet's
    and ``label_subset`` lists the covered ones."""

    dataset_dir = "imagenet-adversarial"
    image_subdir = "imagenet-a"
    require_all_classes = False
