"""The nine CoOp benchmarks described by a ``split_zhou_<ClassName>.json`` file.

Each class only names its folders, its class-name clean-ups and its prompt templates; the
reading is ``common.SplitFileDataset``. ``template`` is CoOp's; ``templates`` is the ensemble
SAFE uses (Tip-Adapter's), which for these datasets is the same single template.
"""

from fsclip.backend import DATASET_REGISTRY

from .common import SplitFileDataset


@DATASET_REGISTRY.register()
class Caltech101(SplitFileDataset):
    """Caltech-101 without BACKGROUND_Google and Faces_easy (100 classes)."""

    dataset_dir = "caltech-101"
    image_subdir = "101_ObjectCategories"
    # CoOp's split file already carries these names; applied again for hand-made splits.
    renames = {"airplanes": "airplane", "Faces": "face", "Leopards": "leopard",
               "Motorbikes": "motorbike"}
    template = "a photo of a {}."
    templates = [template]


@DATASET_REGISTRY.register()
class OxfordPets(SplitFileDataset):
    """Oxford-IIIT Pets (37 breeds)."""

    dataset_dir = "oxford_pets"
    image_subdir = "images"
    template = "a photo of a {}, a type of pet."
    templates = [template]


@DATASET_REGISTRY.register()
class StanfordCars(SplitFileDataset):
    """Stanford Cars (196 models); split paths are relative to the dataset folder."""

    dataset_dir = "stanford_cars"
    image_subdir = ""
    template = "a photo of a {}."
    templates = [template]


@DATASET_REGISTRY.register()
class OxfordFlowers(SplitFileDataset):
    """Oxford Flowers-102."""

    dataset_dir = "oxford_flowers"
    image_subdir = "jpg"
    template = "a photo of a {}, a type of flower."
    templates = [template]


@DATASET_REGISTRY.register()
class Food101(SplitFileDataset):
    """Food-101."""

    dataset_dir = "food-101"
    image_subdir = "images"
    template = "a photo of {}, a type of food."
    templates = [template]


@DATASET_REGISTRY.register()
class SUN397(SplitFileDataset):
    """SUN397 (397 scene classes)."""

    dataset_dir = "sun397"
    image_subdir = "SUN397"
    template = "a photo of a {}."
    templates = [template]


@DATASET_REGISTRY.register()
class DescribableTextures(SplitFileDataset):
    """Describable Textures (47 classes)."""

    dataset_dir = "dtd"
    image_subdir = "images"
    template = "{} texture."
    templates = [template]


@DATASET_REGISTRY.register()
class EuroSAT(SplitFileDataset):
    """EuroSAT RGB (10 land-cover classes) with CoOp's long class names."""

    dataset_dir = "eurosat"
    image_subdir = "2750"
    # CoOp's split file already carries the long names; applied again for hand-made splits.
    renames = {
        "AnnualCrop": "Annual Crop Land",
        "Forest": "Forest",
        "HerbaceousVegetation": "Herbaceous Vegetation Land",
        "Highway": "Highway or Road",
        "Industrial": "Industrial Buildings",
        "Pasture": "Pasture Land",
        "PermanentCrop": "Permanent Crop Land",
        "Residential": "Residential Buildings",
        "River": "River",
        "SeaLake": "Sea or Lake",
    }
    template = "a centered satellite photo of {}."
    templates = [template]


@DATASET_REGISTRY.register()
class UCF101(SplitFileDataset):
    """UCF101 middle frames (101 actions)."""

    dataset_dir = "ucf101"
    image_subdir = "UCF-101-midframes"
    template = "a photo of a person doing {}."
    templates = [template]
