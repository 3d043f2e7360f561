"""ImageNet-Sketch, test only, in ImageNet's label space."""

from fsclip.backend import DATASET_REGISTRY

from .imagenet import ImageNetShift


@DATASET_REGISTRY.register()
class ImageNetSketch(ImageNetShift):
    """``images/<wnid>/``, all ImageNet classes."""

    dataset_dir = "imagenet-sketch"
    image_subdir = "images"
