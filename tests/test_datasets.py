"""The registered benchmark datasets on tiny trees in exactly CoOp's on-disk layouts.

Each builder writes real image files (8x8 JPEG/PNG), the split file in CoOp's format and the
real class-name quirks; the tests construct the datasets from a yacs config the way train.py
does (defaults + fsclip.datasets.extend_cfg + configs/datasets/<name>.yaml).
"""

from __future__ import annotations

import errno
import hashlib
import io
import json
import os
import os.path as osp
import random
from collections import Counter, OrderedDict, defaultdict
from typing import Dict, List, Tuple

import pytest
from PIL import Image

import fsclip.datasets
from fsclip.backend import DATASET_REGISTRY
from fsclip.datasets.common import BenchmarkDataset, DatasetError
from fsclip.engine.config import get_cfg_default
from fsclip.templates import get_templates

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
CONFIGS = osp.join(REPO, "configs", "datasets")


def _image_bytes(fmt: str) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (120, 60, 200)).save(buf, format=fmt)
    return buf.getvalue()


JPEG, PNG = _image_bytes("JPEG"), _image_bytes("PNG")


def write_image(path: str) -> None:
    os.makedirs(osp.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(PNG if path.lower().endswith(".png") else JPEG)


def make_cfg(yaml_name: str, root: str, shots: int = -1, seed: int = 1, subsample: str = "all",
             opts: Tuple = ()):
    cfg = get_cfg_default()
    fsclip.datasets.extend_cfg(cfg)
    cfg.merge_from_file(osp.join(CONFIGS, f"{yaml_name}.yaml"))
    cfg.DATASET.ROOT = root
    cfg.DATASET.NUM_SHOTS = shots
    cfg.DATASET.SUBSAMPLE_CLASSES = subsample
    cfg.SEED = seed
    if opts:
        cfg.merge_from_list(list(opts))
    cfg.freeze()
    return cfg


def build(yaml_name: str, root: str, **kwargs):
    cfg = make_cfg(yaml_name, root, **kwargs)
    return DATASET_REGISTRY.get(cfg.DATASET.NAME)(cfg)


def dassl_fewshot(items, num_shots: int):
    """Dassl's generate_fewshot_dataset written out, on the global ``random``."""
    tracker = defaultdict(list)
    for item in items:
        tracker[item.label].append(item)
    out = []
    for group in tracker.values():
        out.extend(random.sample(group, num_shots) if len(group) >= num_shots else group)
    return out


def per_class(items) -> Dict[int, int]:
    return dict(Counter(item.label for item in items))


# --------------------------------------------------------------------------------------------
# Split-file datasets: (yaml, folder, image_subdir, split file, [(path pattern, json name,
# clean name)], other files on disk). Classes are listed in label order, which for CoOp's files
# is the sorted order of the raw folder names (so "Faces" comes before "accordion").
# --------------------------------------------------------------------------------------------

SPLIT_SPECS = {
    "Caltech101": ("caltech101", "caltech-101", "101_ObjectCategories", "split_zhou_Caltech101.json", [
        ("Faces/image_{i:04d}.jpg", "face", "face"),
        ("Leopards/image_{i:04d}.jpg", "leopard", "leopard"),
        ("Motorbikes/image_{i:04d}.jpg", "motorbike", "motorbike"),
        ("accordion/image_{i:04d}.jpg", "accordion", "accordion"),
        ("airplanes/image_{i:04d}.jpg", "airplane", "airplane"),
        ("dollar_bill/image_{i:04d}.jpg", "dollar_bill", "dollar bill"),
    ], ["101_ObjectCategories/BACKGROUND_Google/image_0001.jpg",
        "101_ObjectCategories/Faces_easy/image_0001.jpg"]),
    "OxfordPets": ("oxford_pets", "oxford_pets", "images", "split_zhou_OxfordPets.json", [
        ("Abyssinian_{i}.jpg", "abyssinian", "abyssinian"),
        ("american_bulldog_{i}.jpg", "american_bulldog", "american bulldog"),
        ("great_pyrenees_{i}.jpg", "great_pyrenees", "great pyrenees"),
        ("Russian_Blue_{i}.jpg", "russian_blue", "russian blue"),
        ("yorkshire_terrier_{i}.jpg", "yorkshire_terrier", "yorkshire terrier"),
    ], ["annotations/trainval.txt", "annotations/test.txt"]),
    "StanfordCars": ("stanford_cars", "stanford_cars", "", "split_zhou_StanfordCars.json", [
        ("cars_train/{i:05d}1.jpg", "2012 Audi TTS Coupe", "2012 Audi TTS Coupe"),
        ("cars_train/{i:05d}2.jpg", "1993 Geo Metro Convertible", "1993 Geo Metro Convertible"),
        ("cars_test/{i:05d}3.jpg", "2012 Tesla Model S", "2012 Tesla Model S"),
        ("cars_test/{i:05d}4.jpg", "2007 Chevrolet Express Cargo Van",
         "2007 Chevrolet Express Cargo Van"),
    ], ["cars_test_annos_withlabels.mat", "devkit/cars_meta.mat"]),
    "OxfordFlowers": ("oxford_flowers", "oxford_flowers", "jpg", "split_zhou_OxfordFlowers.json", [
        ("image_{i:03d}01.jpg", "pink primrose", "pink primrose"),
        ("image_{i:03d}02.jpg", "hard-leaved pocket orchid", "hard-leaved pocket orchid"),
        ("image_{i:03d}03.jpg", "canterbury bells", "canterbury bells"),
        ("image_{i:03d}04.jpg", "sweet pea", "sweet pea"),
    ], ["cat_to_name.json", "imagelabels.mat"]),
    "Food101": ("food101", "food-101", "images", "split_zhou_Food101.json", [
        ("apple_pie/10{i:04d}.jpg", "apple_pie", "apple pie"),
        ("baby_back_ribs/20{i:04d}.jpg", "baby_back_ribs", "baby back ribs"),
        ("baklava/30{i:04d}.jpg", "baklava", "baklava"),
        ("beef_carpaccio/40{i:04d}.jpg", "beef_carpaccio", "beef carpaccio"),
        ("beignets/50{i:04d}.jpg", "beignets", "beignets"),
    ], ["meta/classes.txt", "README.txt", "license_agreement.txt"]),
    "SUN397": ("sun397", "sun397", "SUN397", "split_zhou_SUN397.json", [
        ("a/abbey/sun_a{i:03d}.jpg", "abbey", "abbey"),
        ("a/apartment_building/outdoor/sun_b{i:03d}.jpg", "outdoor apartment_building",
         "outdoor apartment building"),
        ("b/bakery/shop/sun_c{i:03d}.jpg", "shop bakery", "shop bakery"),
        ("c/cathedral/indoor/sun_d{i:03d}.jpg", "indoor cathedral", "indoor cathedral"),
    ], ["ClassName.txt", "Training_01.txt", "Testing_01.txt"]),
    "DescribableTextures": ("dtd", "dtd", "images", "split_zhou_DescribableTextures.json", [
        ("banded/banded_{i:04d}.jpg", "banded", "banded"),
        ("blotchy/blotchy_{i:04d}.jpg", "blotchy", "blotchy"),
        ("bubbly/bubbly_{i:04d}.jpg", "bubbly", "bubbly"),
        ("zigzagged/zigzagged_{i:04d}.jpg", "zigzagged", "zigzagged"),
        ("waffled/waffled_{i:04d}.jpg", "waffled", "waffled"),
    ], ["imdb/imdb.mat", "labels/labels_joint_anno.txt"]),
    "EuroSAT": ("eurosat", "eurosat", "2750", "split_zhou_EuroSAT.json", [
        ("AnnualCrop/AnnualCrop_{i}.jpg", "Annual Crop Land", "Annual Crop Land"),
        ("Forest/Forest_{i}.jpg", "Forest", "Forest"),
        ("HerbaceousVegetation/HerbaceousVegetation_{i}.jpg", "Herbaceous Vegetation Land",
         "Herbaceous Vegetation Land"),
        ("Highway/Highway_{i}.jpg", "Highway or Road", "Highway or Road"),
        ("SeaLake/SeaLake_{i}.jpg", "Sea or Lake", "Sea or Lake"),
    ], []),
    "UCF101": ("ucf101", "ucf101", "UCF-101-midframes", "split_zhou_UCF101.json", [
        ("Apply_Eye_Makeup/v_ApplyEyeMakeup_g{i:02d}_c01.jpg", "Apply_Eye_Makeup",
         "Apply Eye Makeup"),
        ("Basketball/v_Basketball_g{i:02d}_c01.jpg", "Basketball", "Basketball"),
        ("Playing_Daf/v_PlayingDaf_g{i:02d}_c01.jpg", "Playing_Daf", "Playing Daf"),
        ("Yo_Yo/v_YoYo_g{i:02d}_c01.jpg", "Yo_Yo", "Yo Yo"),
    ], []),
}


def counts(label: int) -> Dict[str, int]:
    """Images per split for a class: train 5 or 6, val 2..4, test 3."""
    return {"train": 5 + label % 2, "val": 2 + label % 3, "test": 3}


def make_split_tree(root: str, name: str, raw_names: bool = False) -> dict:
    """Write a dataset of SPLIT_SPECS[name] under root; return its split rows."""
    _, folder, image_subdir, split_file, classes, others = SPLIT_SPECS[name]
    base = osp.join(root, folder)
    image_dir = osp.join(base, image_subdir)
    split: Dict[str, list] = {"train": [], "val": [], "test": []}
    for label, (pattern, json_name, _) in enumerate(classes):
        if raw_names:  # a hand-made split file carrying the raw folder name
            json_name = pattern.split("/")[0]
        i = 0
        for part, n in counts(label).items():
            for _ in range(n):
                i += 1
                rel = pattern.format(i=i)
                write_image(osp.join(image_dir, rel))
                split[part].append([rel, label, json_name])
    random.Random(0).shuffle(split["train"])  # classes first appear in a scrambled order
    for other in others:
        path = osp.join(base, other)
        if other.endswith(".jpg"):
            write_image(path)
        else:
            os.makedirs(osp.dirname(path), exist_ok=True)
            open(path, "w").close()
    with open(osp.join(base, split_file), "w") as f:
        json.dump(split, f)
    return split


# --------------------------------------------------------------------------------------------
# FGVCAircraft and the ImageNet family
# --------------------------------------------------------------------------------------------

AIRCRAFT = ["707-320", "727-200", "A300B4", "Cessna 172", "F/A-18", "DHC-1"]

IMAGENET = OrderedDict([
    ("n01440764", "tench"), ("n01443537", "goldfish"), ("n01484850", "great white shark"),
    ("n01491361", "tiger shark"), ("n01494475", "hammerhead shark"), ("n01496331", "electric ray"),
])
WNIDS = list(IMAGENET)
SUBSET = [1, 3, 4]  # ImageNet labels the 200-class variants cover in these tiny trees


def make_fgvc_tree(root: str) -> None:
    base = osp.join(root, "fgvc_aircraft")
    os.makedirs(base, exist_ok=True)
    with open(osp.join(base, "variants.txt"), "w") as f:
        f.write("\n".join(AIRCRAFT) + "\n")
    for name in ("families.txt", "manufacturers.txt", "images_family_train.txt"):
        open(osp.join(base, name), "w").close()
    image_id = 1000000
    lines = {"train": [], "val": [], "test": []}
    for label, variant in enumerate(AIRCRAFT):
        for part, n in counts(label).items():
            for _ in range(n):
                image_id += 7
                write_image(osp.join(base, "images", f"{image_id}.jpg"))
                lines[part].append(f"{image_id} {variant}")
    for part, rows in lines.items():
        random.Random(1).shuffle(rows)
        with open(osp.join(base, f"images_variant_{part}.txt"), "w") as f:
            f.write("\n".join(rows) + "\n")


def write_classnames(folder: str) -> None:
    os.makedirs(folder, exist_ok=True)
    with open(osp.join(folder, "classnames.txt"), "w") as f:
        for wnid, name in IMAGENET.items():
            f.write(f"{wnid} {name}\n")


def make_imagenet_tree(root: str) -> None:
    base = osp.join(root, "imagenet")
    write_classnames(base)
    for label, wnid in enumerate(WNIDS):
        for i in range(5 + label % 2):
            write_image(osp.join(base, "images", "train", wnid, f"{wnid}_{9 - i}{i}.JPEG"))
        for i in range(3):
            write_image(osp.join(base, "images", "val", wnid,
                                 f"ILSVRC2012_val_{label * 10 + i:08d}.JPEG"))
    # hidden files are not images (Dassl's listdir_nohidden)
    open(osp.join(base, "images", "train", WNIDS[0], ".DS_Store"), "w").close()


def make_shift_tree(root: str, name: str) -> None:
    folder, subdir, labels = {
        "ImageNetV2": ("imagenetv2", "imagenetv2-matched-frequency-format-val", range(6)),
        "ImageNetSketch": ("imagenet-sketch", "images", range(6)),
        "ImageNetA": ("imagenet-adversarial", "imagenet-a", SUBSET),
        "ImageNetR": ("imagenet-rendition", "imagenet-r", SUBSET),
    }[name]
    base = osp.join(root, folder)
    write_classnames(base)
    for label in labels:
        cls_dir = str(label) if name == "ImageNetV2" else WNIDS[label]
        for i in range(2 + label):
            fname = {"ImageNetV2": f"{i}f3a{label}.jpeg", "ImageNetSketch": f"sketch_{i}.JPEG",
                     "ImageNetA": f"0.00{i}_{IMAGENET[WNIDS[label]]} _ x_0.{i}.jpg",
                     "ImageNetR": f"art_{i}.jpg"}[name]
            write_image(osp.join(base, subdir, cls_dir, fname))
    if name in ("ImageNetA", "ImageNetR"):
        with open(osp.join(base, subdir, "README.txt"), "w") as f:
            f.write("readme\n")


SHIFTS = ["ImageNetV2", "ImageNetSketch", "ImageNetA", "ImageNetR"]
SHIFT_YAML = {"ImageNetV2": "imagenetv2", "ImageNetSketch": "imagenet_sketch",
              "ImageNetA": "imagenet_a", "ImageNetR": "imagenet_r"}

# Trainable datasets: name -> (yaml, builder, expected clean names in label order)
TRAINABLE = {name: (spec[0], (lambda root, n=name: make_split_tree(root, n)),
                    [c[2] for c in spec[4]]) for name, spec in SPLIT_SPECS.items()}
TRAINABLE["FGVCAircraft"] = ("fgvc_aircraft", make_fgvc_tree, AIRCRAFT)
TRAINABLE["ImageNet"] = ("imagenet", make_imagenet_tree, list(IMAGENET.values()))


def expected_counts(name: str, label: int) -> Dict[str, int]:
    if name == "ImageNet":
        return {"train": 5 + label % 2, "val": 3, "test": 3}
    return counts(label)


# --------------------------------------------------------------------------------------------
# Tests
# --------------------------------------------------------------------------------------------

def test_every_benchmark_is_registered_with_a_config():
    names = set(TRAINABLE) | set(SHIFTS) | {"Custom"}
    assert len(names) == 16
    for name in names:
        assert name in DATASET_REGISTRY.registered_names()
    yaml_names = {v[0] for v in TRAINABLE.values()} | set(SHIFT_YAML.values()) | {"custom"}
    for yaml_name in yaml_names:
        assert osp.isfile(osp.join(CONFIGS, f"{yaml_name}.yaml")), yaml_name
        cfg = make_cfg(yaml_name, "/nowhere")
        assert cfg.DATASET.NAME in names


@pytest.mark.parametrize("name", sorted(TRAINABLE))
def test_full_dataset_classes_names_splits_and_labels(tmp_path, name):
    yaml_name, make, clean = TRAINABLE[name]
    make(str(tmp_path))
    ds = build(yaml_name, str(tmp_path))
    assert ds.num_classes == len(clean)
    assert ds.classnames == clean
    assert ds.lab2cname == dict(enumerate(clean))
    for split in ("train", "val", "test"):
        items = {"train": ds.train_x, "val": ds.val, "test": ds.test}[split]
        assert per_class(items) == {y: expected_counts(name, y)[split] for y in range(len(clean))}
        for item in items:
            assert osp.isabs(item.impath) and osp.isfile(item.impath)
            assert item.classname == clean[item.label]
    if name == "ImageNet":  # with all shots, CoOp's test-as-val is kept
        assert ds.val == ds.test


@pytest.mark.parametrize("name", sorted(TRAINABLE))
@pytest.mark.parametrize("shots,seed", [(1, 1), (2, 3), (4, 2), (8, 1)])
def test_fewshot_equals_dassl_algorithm(tmp_path, name, shots, seed):
    yaml_name, make, clean = TRAINABLE[name]
    make(str(tmp_path))
    full = build(yaml_name, str(tmp_path))
    ds = build(yaml_name, str(tmp_path), shots=shots, seed=seed)

    random.seed(seed)  # what set_random_seed does before CoOp builds the dataset
    want_train = dassl_fewshot(full.train_x, shots)
    if name == "ImageNet":  # few-shot val: the stream continues over the train images not picked
        picked = {d.impath for d in want_train}
        want_val = dassl_fewshot([d for d in full.train_x if d.impath not in picked], min(shots, 4))
        assert not picked & {d.impath for d in ds.val}
        assert not {d.impath for d in ds.val} & {d.impath for d in full.test}
    else:
        want_val = dassl_fewshot(full.val, min(shots, 4))
    assert [d.impath for d in ds.train_x] == [d.impath for d in want_train]
    assert [d.impath for d in ds.val] == [d.impath for d in want_val]
    assert [d.label for d in ds.train_x] == [d.label for d in want_train]
    assert [d.impath for d in ds.test] == [d.impath for d in full.test]
    for y in range(len(clean)):
        n = expected_counts(name, y)
        assert per_class(ds.train_x)[y] == min(shots, n["train"])
        if name != "ImageNet":
            assert per_class(ds.val)[y] == min(shots, 4, n["val"])

    cache = osp.join(full.dataset_dir, "split_fewshot", f"shot_{shots}-seed_{seed}.json")
    with open(cache) as f:
        data = json.load(f)
    assert len(data["train"]) == len(ds.train_x)
    again = build(yaml_name, str(tmp_path), shots=shots, seed=seed)  # read from the cache
    assert [d.impath for d in again.train_x] == [d.impath for d in ds.train_x]
    assert [d.impath for d in again.val] == [d.impath for d in ds.val]


@pytest.mark.parametrize("name", sorted(TRAINABLE))
def test_subsample_base_and_new(tmp_path, name):
    yaml_name, make, clean = TRAINABLE[name]
    make(str(tmp_path))
    m = (len(clean) + 1) // 2
    base = build(yaml_name, str(tmp_path), shots=2, subsample="base")
    new = build(yaml_name, str(tmp_path), shots=2, subsample="new")
    assert base.classnames == clean[:m]
    assert new.classnames == clean[m:]
    for ds, names in ((base, clean[:m]), (new, clean[m:])):
        assert ds.num_classes == len(names)
        for items in (ds.train_x, ds.val, ds.test):
            assert {d.label for d in items} == set(range(len(names)))
            assert all(d.classname == names[d.label] for d in items)
        assert per_class(ds.train_x) == {y: 2 for y in range(len(names))}


@pytest.mark.parametrize("name", ["Caltech101", "EuroSAT"])
def test_renames_apply_to_raw_names_in_a_hand_made_split(tmp_path, name):
    make_split_tree(str(tmp_path), name, raw_names=True)
    ds = build(SPLIT_SPECS[name][0], str(tmp_path))
    assert ds.classnames == [c[2] for c in SPLIT_SPECS[name][4]]


def test_imagenet_reads_class_folders_in_listing_order(tmp_path):
    make_imagenet_tree(str(tmp_path))
    ds = build("imagenet", str(tmp_path))
    folder = osp.join(str(tmp_path), "imagenet", "images", "train", WNIDS[0])
    listed = [f for f in os.listdir(folder) if not f.startswith(".")]
    assert [osp.basename(d.impath) for d in ds.train_x if d.label == 0] == listed


def test_imagenet_labels_follow_sorted_wnids(tmp_path):
    make_imagenet_tree(str(tmp_path))
    # a classnames.txt in another order gives the same labels
    path = osp.join(str(tmp_path), "imagenet", "classnames.txt")
    with open(path) as f:
        lines = f.readlines()
    with open(path, "w") as f:
        f.writelines(reversed(lines))
    ds = build("imagenet", str(tmp_path))
    assert ds.classnames == list(IMAGENET.values())
    assert all(osp.basename(osp.dirname(d.impath)) == WNIDS[d.label] for d in ds.test)


@pytest.mark.parametrize("name", SHIFTS)
def test_imagenet_shifts_use_imagenet_label_space(tmp_path, name):
    make_imagenet_tree(str(tmp_path))
    make_shift_tree(str(tmp_path), name)
    imagenet = build("imagenet", str(tmp_path))
    ds = build(SHIFT_YAML[name], str(tmp_path), shots=16)  # NUM_SHOTS does not apply
    # the classifier of a model trained on ImageNet applies unchanged
    assert ds.num_classes == imagenet.num_classes == 6
    assert ds.classnames == imagenet.classnames
    assert ds.lab2cname == imagenet.lab2cname
    covered = SUBSET if name in ("ImageNetA", "ImageNetR") else list(range(6))
    assert ds.label_subset == (SUBSET if name in ("ImageNetA", "ImageNetR") else None)
    assert per_class(ds.test) == {y: 2 + y for y in covered}
    assert ds.train_x == ds.test and ds.val is None
    for item in ds.test:
        folder = osp.basename(osp.dirname(item.impath))
        wnid = WNIDS[int(folder)] if name == "ImageNetV2" else folder
        assert item.label == WNIDS.index(wnid)
        assert item.classname == IMAGENET[wnid] == imagenet.lab2cname[item.label]
    assert not osp.exists(osp.join(ds.dataset_dir, "split_fewshot"))


def test_label_subset_is_none_for_the_benchmarks():
    for name in TRAINABLE:
        assert DATASET_REGISTRY.get(name).label_subset is None


# ----------------------------------------------------------------------------- templates

COOP_TEMPLATES = {
    "OxfordPets": "a photo of a {}, a type of pet.",
    "OxfordFlowers": "a photo of a {}, a type of flower.",
    "FGVCAircraft": "a photo of a {}, a type of aircraft.",
    "DescribableTextures": "{} texture.",
    "EuroSAT": "a centered satellite photo of {}.",
    "Food101": "a photo of {}, a type of food.",
    "UCF101": "a photo of a person doing {}.",
}
IMAGENET_ENSEMBLE = [
    "itap of a {}.", "a bad photo of the {}.", "a origami {}.", "a photo of the large {}.",
    "a {} in a video game.", "art of the {}.", "a photo of the small {}.",
]


@pytest.mark.parametrize("name", sorted(set(TRAINABLE) | set(SHIFTS) | {"Custom"}))
def test_templates(name):
    single = COOP_TEMPLATES.get(name, "a photo of a {}.")
    assert get_templates(name) == [single]
    assert get_templates(name, "single") == [single]
    assert get_templates(name, "classname") == ["{}"]
    imagenet_like = name == "ImageNet" or name in SHIFTS
    assert get_templates(name, "ensemble") == (IMAGENET_ENSEMBLE if imagenet_like else [single])
    cls = DATASET_REGISTRY.get(name)
    assert cls.template == single
    for t in get_templates(name, "ensemble"):
        assert t.count("{}") == 1


def test_templates_errors():
    with pytest.raises(ValueError, match='Do you mean "ImageNet"'):
        get_templates("Imagenet")
    with pytest.raises(ValueError, match="classname, single, ensemble"):
        get_templates("ImageNet", "multi")


# ----------------------------------------------------------------------------- Custom

def make_custom_flat(root: str, sizes=(10, 7, 3, 1)) -> List[str]:
    classes = ["golden_retriever", "Maine_Coon", "red fox", "zebra"][:len(sizes)]
    for cname, n in zip(classes, sizes):
        for i in range(n):
            ext = ".png" if i % 2 else ".JPG"
            write_image(osp.join(root, "mypets", cname, f"img{i:02d}{ext}"))
    open(osp.join(root, "mypets", classes[0], "notes.txt"), "w").close()  # not an image
    return sorted(classes)


def test_custom_flat_split_is_deterministic_and_hash_based(tmp_path):
    root = str(tmp_path)
    classes = make_custom_flat(root)
    ds = build("custom", root, opts=("DATASET.CUSTOM_DIR", "mypets"))
    assert ds.classnames == [c.replace("_", " ") for c in classes]  # sorted folder names
    sizes = {"golden_retriever": 10, "Maine_Coon": 7, "red fox": 3, "zebra": 1}
    for label, cname in enumerate(classes):
        files = sorted(f"img{i:02d}{'.png' if i % 2 else '.JPG'}" for i in range(sizes[cname]))
        ranked = sorted(files, key=lambda n: hashlib.sha1(n.encode()).hexdigest())
        n = len(files)
        n_train = max(1, round(n * 0.5))
        n_val = min(n - n_train, round(n * 0.2))
        got = {split: [osp.basename(d.impath) for d in items if d.label == label]
               for split, items in (("train", ds.train_x), ("val", ds.val), ("test", ds.test))}
        assert got["train"] == sorted(ranked[:n_train])
        assert got["val"] == sorted(ranked[n_train:n_train + n_val])
        assert got["test"] == sorted(ranked[n_train + n_val:])
    # same split again, and the few-shot cache folder is not taken for a class
    fs = build("custom", root, shots=2, opts=("DATASET.CUSTOM_DIR", "mypets"))
    assert osp.isdir(osp.join(root, "mypets", "split_fewshot"))
    again = build("custom", root, opts=("DATASET.CUSTOM_DIR", "mypets"))
    assert [d.impath for d in again.train_x] == [d.impath for d in ds.train_x]
    assert again.num_classes == 4
    assert per_class(fs.train_x) == {0: 2, 1: 2, 2: 2, 3: 1}


def test_custom_split_fractions_and_absolute_dir(tmp_path):
    make_custom_flat(str(tmp_path), sizes=(10, 10))
    ds = build("custom", "", opts=("DATASET.CUSTOM_DIR", str(tmp_path / "mypets"),
                                   "DATASET.CUSTOM_SPLIT", (0.8, 0.1)))
    assert per_class(ds.train_x) == {0: 8, 1: 8}
    assert per_class(ds.val) == {0: 1, 1: 1}
    assert per_class(ds.test) == {0: 1, 1: 1}


def test_custom_split_folders(tmp_path):
    root = str(tmp_path)
    for split, n in (("train", 4), ("test", 2)):
        for cname in ("cat", "dog_house"):
            for i in range(n):
                write_image(osp.join(root, "mine", split, cname, f"{i}.png"))
    ds = build("custom", root, opts=("DATASET.CUSTOM_DIR", "mine"))
    assert ds.classnames == ["cat", "dog house"]
    assert per_class(ds.train_x) == {0: 4, 1: 4}
    assert per_class(ds.test) == {0: 2, 1: 2}
    assert ds.val == ds.test  # no val/: test/ serves as val
    write_image(osp.join(root, "mine", "test", "cow", "0.png"))
    with pytest.raises(DatasetError, match="no counterpart in train/"):
        build("custom", root, opts=("DATASET.CUSTOM_DIR", "mine"))


def test_custom_errors(tmp_path):
    root = str(tmp_path)
    with pytest.raises(DatasetError, match="DATASET.CUSTOM_DIR is empty"):
        build("custom", root, opts=("DATASET.CUSTOM_DIR", ""))
    make_custom_flat(root)
    os.makedirs(osp.join(root, "mypets", "empty_class"))
    with pytest.raises(DatasetError, match="class folder holds no image") as err:
        build("custom", root, opts=("DATASET.CUSTOM_DIR", "mypets"))
    assert "empty_class" in str(err.value) and "docs/datasets.md#custom" in str(err.value)


@pytest.mark.parametrize("layout", ["flat", "split_folders", "subsample"])
def test_custom_with_fewer_than_two_classes_is_refused(tmp_path, layout):
    """One class would report 100% accuracy whatever the model does."""
    root = str(tmp_path)
    if layout == "flat":
        make_custom_flat(root, sizes=(10,))
    elif layout == "split_folders":
        for split in ("train", "test"):
            for i in range(3):
                write_image(osp.join(root, "mypets", split, "cat", f"{i}.png"))
    else:  # 2 classes, of which base keeps 1
        make_custom_flat(root, sizes=(10, 10))
    subsample = "base" if layout == "subsample" else "all"
    with pytest.raises(DatasetError, match="at least 2 classes") as err:
        build("custom", root, subsample=subsample, opts=("DATASET.CUSTOM_DIR", "mypets"))
    assert osp.join(root, "mypets") in str(err.value)
    if layout == "subsample":
        assert "DATASET.SUBSAMPLE_CLASSES base leaves 1 class" in str(err.value)


# ----------------------------------------------------------------------------- bad input

ALL_YAML = {name: spec[0] for name, spec in TRAINABLE.items()}
ALL_YAML.update(SHIFT_YAML)
ALL_YAML["Custom"] = "custom"


@pytest.mark.parametrize("name", sorted(ALL_YAML))
def test_missing_root_and_dataset_folder(tmp_path, name):
    with pytest.raises(DatasetError, match="DATASET.ROOT is empty; pass --root") as err:
        build(ALL_YAML[name], "")
    assert f"docs/datasets.md#{name.lower()}" in str(err.value) and name in str(err.value)
    missing_root = str(tmp_path / "no_such_root")
    with pytest.raises(FileNotFoundError, match="is not a folder") as err:
        build(ALL_YAML[name], missing_root)
    assert missing_root in str(err.value)
    with pytest.raises(DatasetError, match="dataset folder not found") as err:
        build(ALL_YAML[name], str(tmp_path))
    folder = "custom" if name == "Custom" else DATASET_REGISTRY.get(name).dataset_dir
    assert osp.join(str(tmp_path), folder) in str(err.value)
    assert f"docs/datasets.md#{name.lower()}" in str(err.value)


def test_missing_split_file(tmp_path):
    make_split_tree(str(tmp_path), "Caltech101")
    path = osp.join(str(tmp_path), "caltech-101", "split_zhou_Caltech101.json")
    os.remove(path)
    with pytest.raises(DatasetError, match="split file not found") as err:
        build("caltech101", str(tmp_path))
    assert path in str(err.value) and "docs/datasets.md#caltech101" in str(err.value)


def test_missing_listed_image(tmp_path):
    split = make_split_tree(str(tmp_path), "OxfordPets")
    gone = [osp.join(str(tmp_path), "oxford_pets", "images", split["test"][i][0]) for i in (0, 1)]
    for path in gone:
        os.remove(path)
    with pytest.raises(DatasetError, match=r"not found \(and 1 more\)") as err:
        build("oxford_pets", str(tmp_path))
    assert gone[0] in str(err.value) and "split_zhou_OxfordPets.json" in str(err.value)


def test_missing_listed_image_folder(tmp_path):
    make_split_tree(str(tmp_path), "Food101")
    import shutil

    shutil.rmtree(osp.join(str(tmp_path), "food-101", "images", "baklava"))
    with pytest.raises(DatasetError, match="image listed in split_zhou_Food101.json not found"):
        build("food101", str(tmp_path))


def test_split_class_without_training_images(tmp_path):
    make_split_tree(str(tmp_path), "DescribableTextures")
    path = osp.join(str(tmp_path), "dtd", "split_zhou_DescribableTextures.json")
    with open(path) as f:
        split = json.load(f)
    split["train"] = [row for row in split["train"] if row[1] != 2]
    with open(path, "w") as f:
        json.dump(split, f)
    with pytest.raises(DatasetError, match=r"class 2 \('bubbly'\) has no training images"):
        build("dtd", str(tmp_path))


@pytest.mark.parametrize("content,match", [
    ("{not json", "not readable JSON"),
    ('{"train": [], "val": []}', 'no "test" list'),
    ('{"train": [["a.jpg", 0]], "val": [], "test": []}', "malformed"),
])
def test_malformed_split_file(tmp_path, content, match):
    make_split_tree(str(tmp_path), "UCF101")
    with open(osp.join(str(tmp_path), "ucf101", "split_zhou_UCF101.json"), "w") as f:
        f.write(content)
    with pytest.raises(DatasetError, match=match):
        build("ucf101", str(tmp_path))


def test_fgvc_unknown_variant_and_missing_image(tmp_path):
    make_fgvc_tree(str(tmp_path))
    base = osp.join(str(tmp_path), "fgvc_aircraft")
    with open(osp.join(base, "images_variant_test.txt"), "a") as f:
        f.write("9999999 Boeing 999\n")
    with pytest.raises(DatasetError, match="'Boeing 999' of image 9999999 is not in variants.txt"):
        build("fgvc_aircraft", str(tmp_path))
    make_fgvc_tree(str(tmp_path))
    with open(osp.join(base, "images_variant_test.txt"), "a") as f:
        f.write("9999999 A300B4\n")
    with pytest.raises(DatasetError, match="9999999.jpg"):
        build("fgvc_aircraft", str(tmp_path))


def test_imagenet_empty_missing_and_unknown_class_folders(tmp_path):
    root = str(tmp_path)
    make_imagenet_tree(root)
    train = osp.join(root, "imagenet", "images", "train")
    for f in os.listdir(osp.join(train, WNIDS[2])):
        os.remove(osp.join(train, WNIDS[2], f))
    with pytest.raises(DatasetError, match="class folder holds no image") as err:
        build("imagenet", root)
    assert osp.join(train, WNIDS[2]) in str(err.value)
    os.rmdir(osp.join(train, WNIDS[2]))
    with pytest.raises(DatasetError, match=r"class folder not found \(1 of 6 missing\)"):
        build("imagenet", root)
    os.makedirs(osp.join(train, "n99999999"))
    with pytest.raises(DatasetError, match="not a class of classnames.txt"):
        build("imagenet", root)
    os.remove(osp.join(root, "imagenet", "classnames.txt"))
    with pytest.raises(DatasetError, match="classnames.txt not found"):
        build("imagenet", root)


def test_imagenet_val_without_class_folders(tmp_path):
    import shutil

    make_imagenet_tree(str(tmp_path))
    val = osp.join(str(tmp_path), "imagenet", "images", "val")
    shutil.rmtree(val)
    os.makedirs(val)
    with pytest.raises(DatasetError, match="no class folder found") as err:
        build("imagenet", str(tmp_path))
    assert val in str(err.value)


def test_unwritable_fewshot_cache(tmp_path, monkeypatch):
    import fsclip.datasets.common as common

    def denied(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    make_split_tree(str(tmp_path), "EuroSAT")
    monkeypatch.setattr(common, "load_or_create_fewshot", denied)
    with pytest.raises(DatasetError, match="cannot write the few-shot cache") as err:
        build("eurosat", str(tmp_path), shots=2)
    assert osp.join(str(tmp_path), "eurosat", "split_fewshot") in str(err.value)


@pytest.mark.parametrize("code,reason", [(errno.EROFS, "read-only file system"), (errno.ENOSPC, "disk full")])
def test_split_file_on_read_only_or_full_storage_points_to_fewshot_dir(tmp_path, monkeypatch, code, reason):
    """A read-only mount (EROFS, not a PermissionError) or a full disk while writing the few-shot
    split file: one DatasetError naming the folder, the reason and DATASET.FEWSHOT_DIR; no file
    left behind. (Tests run as root, which chmod does not stop: the write is made to fail.)"""
    import fsclip.engine.data.base as base

    def refused(path, text):
        raise OSError(code, os.strerror(code), path)

    make_split_tree(str(tmp_path), "EuroSAT")
    monkeypatch.setattr(base, "atomic_write_text", refused)
    with pytest.raises(DatasetError, match="DATASET.FEWSHOT_DIR") as err:
        build("eurosat", str(tmp_path), shots=2)
    folder = osp.join(str(tmp_path), "eurosat", "split_fewshot")
    assert f"shot_2-seed_1.json: {reason}" in str(err.value) and folder in str(err.value)
    assert not osp.isdir(folder) or os.listdir(folder) == []


def test_imagenetv2_missing_class_folder(tmp_path):
    make_shift_tree(str(tmp_path), "ImageNetV2")
    import shutil

    folder = osp.join(str(tmp_path), "imagenetv2", "imagenetv2-matched-frequency-format-val", "3")
    shutil.rmtree(folder)
    with pytest.raises(DatasetError, match="class folder not found") as err:
        build("imagenetv2", str(tmp_path))
    assert folder in str(err.value) and "docs/datasets.md#imagenetv2" in str(err.value)


def test_error_is_one_line_and_a_file_not_found_error():
    err = DatasetError("OxfordPets", "/data/oxford_pets", "dataset folder not found", "oxfordpets")
    assert isinstance(err, FileNotFoundError)
    assert "\n" not in str(err)
    assert str(err).startswith("OxfordPets: dataset folder not found: /data/oxford_pets")


def test_every_cited_section_exists_in_datasets_md():
    with open(osp.join(REPO, "docs", "datasets.md"), encoding="utf-8") as f:
        headings = {line[3:].strip().lower() for line in f if line.startswith("## ")}
    for name in DATASET_REGISTRY.registered_names():
        cls = DATASET_REGISTRY.get(name)
        if isinstance(cls, type) and issubclass(cls, BenchmarkDataset):
            assert cls.section() in headings, f"docs/datasets.md has no '## {name}' section"


# ----------------------------------------------------------------------------- processes

CHILD = r"""
import json, sys
import fsclip.datasets
from fsclip.backend import DATASET_REGISTRY
from fsclip.engine.config import get_cfg_default

yaml_path, root, shots, seed = sys.argv[1:5]
cfg = get_cfg_default()
fsclip.datasets.extend_cfg(cfg)
cfg.merge_from_file(yaml_path)
cfg.DATASET.ROOT, cfg.DATASET.NUM_SHOTS, cfg.SEED = root, int(shots), int(seed)
ds = DATASET_REGISTRY.get(cfg.DATASET.NAME)(cfg)
print("RESULT " + json.dumps({"train": [d.impath for d in ds.train_x],
                              "val": [d.impath for d in ds.val]}))
"""


def _child_cmd(yaml_name, root, shots, seed):
    import sys

    return [sys.executable, "-c", CHILD, osp.join(CONFIGS, f"{yaml_name}.yaml"), root,
            str(shots), str(seed)]


def _child_result(stdout: str) -> dict:
    lines = [line for line in stdout.splitlines() if line.startswith("RESULT ")]
    assert len(lines) == 1, stdout
    return json.loads(lines[0][len("RESULT "):])


def _dassl_reference(yaml_name, root, shots, seed) -> dict:
    full = build(yaml_name, root)
    random.seed(seed)
    train = dassl_fewshot(full.train_x, shots)
    val = dassl_fewshot(full.val, min(shots, 4))
    return {"train": [d.impath for d in train], "val": [d.impath for d in val]}


def test_fewshot_selection_is_stable_across_processes(tmp_path):
    """A fresh interpreter (another hash seed) picks what Dassl's algorithm picks here."""
    import subprocess

    root = str(tmp_path)
    make_split_tree(root, "SUN397")
    want = _dassl_reference("sun397", root, 2, 5)
    env = dict(os.environ, PYTHONHASHSEED="12345")
    proc = subprocess.run(_child_cmd("sun397", root, 2, 5), env=env, cwd=root,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "Saving preprocessed few-shot data" in proc.stdout  # made there, not read
    assert _child_result(proc.stdout) == want
    assert [d.impath for d in build("sun397", root, shots=2, seed=5).train_x] == want["train"]


def _build_after_barrier(barrier, queue, root, shots, seed):
    barrier.wait(timeout=60)
    ds = build("food101", root, shots=shots, seed=seed)
    queue.put({"train": [d.impath for d in ds.train_x], "val": [d.impath for d in ds.val]})


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_two_processes_building_the_same_split_leave_one_valid_json(tmp_path):
    import multiprocessing

    ctx = multiprocessing.get_context("fork")  # the children start at once, modules loaded
    root = str(tmp_path)
    make_split_tree(root, "Food101")
    cache_dir = osp.join(root, "food-101", "split_fewshot")
    image_dir = osp.join(root, "food-101", "images")
    for seed in (1, 2, 3):
        barrier, queue = ctx.Barrier(2), ctx.Queue()
        procs = [ctx.Process(target=_build_after_barrier, args=(barrier, queue, root, 4, seed))
                 for _ in range(2)]
        for p in procs:
            p.start()
        results = [queue.get(timeout=120) for _ in procs]
        for p in procs:
            p.join(timeout=60)
            assert p.exitcode == 0
        want = _dassl_reference("food101", root, 4, seed)
        assert results[0] == results[1] == want
        assert sorted(os.listdir(cache_dir)) == [f"shot_4-seed_{s}.json" for s in range(1, seed + 1)]
        with open(osp.join(cache_dir, f"shot_4-seed_{seed}.json")) as f:
            data = json.load(f)  # one valid file, no temporary file left behind
        assert [osp.join(image_dir, row[0]) for row in data["train"]] == want["train"]
        assert [osp.join(image_dir, row[0]) for row in data["val"]] == want["val"]


def test_fewshot_dir_keeps_split_files_out_of_the_data_folder(tmp_path, capsys):
    data, splits = tmp_path / "data", tmp_path / "splits"
    make_split_tree(str(data), "EuroSAT")
    before = sorted(p for p in data.rglob("*"))
    first = build("eurosat", str(data), shots=2, seed=3, opts=("DATASET.FEWSHOT_DIR", str(splits)))
    assert sorted(p for p in data.rglob("*")) == before  # nothing written beside the images
    saved = splits / "eurosat" / "shot_2-seed_3.json"
    assert saved.is_file()
    capsys.readouterr()
    again = build("eurosat", str(data), shots=2, seed=3, opts=("DATASET.FEWSHOT_DIR", str(splits)))
    assert f"Loading preprocessed few-shot data from {saved}" in capsys.readouterr().out
    assert [d.impath for d in again.train_x] == [d.impath for d in first.train_x]
    assert [d.impath for d in again.val] == [d.impath for d in first.val]
    # and the picks equal the default place's (same algorithm, same seed)
    default = build("eurosat", str(data), shots=2, seed=3)
    assert [d.impath for d in default.train_x] == [d.impath for d in first.train_x]


def test_unwritable_fewshot_cache_names_the_fewshot_dir_option(tmp_path, monkeypatch):
    import fsclip.datasets.common as common

    def denied(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    make_split_tree(str(tmp_path), "EuroSAT")
    monkeypatch.setattr(common, "load_or_create_fewshot", denied)
    with pytest.raises(DatasetError, match="DATASET.FEWSHOT_DIR"):
        build("eurosat", str(tmp_path), shots=2)
