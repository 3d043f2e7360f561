"""``build_transform(cfg, is_train)`` with the transform names Dassl/CoOp configs use."""

from __future__ import annotations

from typing import Optional, Sequence

import torch
from torchvision.transforms import (
    AutoAugment, AutoAugmentPolicy, CenterCrop, ColorJitter, Compose, GaussianBlur, Normalize,
    RandAugment, RandomApply, RandomCrop, RandomGrayscale, RandomHorizontalFlip,
    RandomResizedCrop, Resize, ToTensor,
)
from torchvision.transforms import InterpolationMode

AVAI_CHOICES = [
    "random_flip", "random_resized_crop", "normalize", "instance_norm", "random_crop",
    "random_translation", "center_crop", "cutout", "imagenet_policy", "randaugment",
    "gaussian_noise", "colorjitter", "randomgrayscale", "gaussian_blur",
]

INTERPOLATION_MODES = {
    "bilinear": InterpolationMode.BILINEAR,
    "bicubic": InterpolationMode.BICUBIC,
    "nearest": InterpolationMode.NEAREST,
}


class Cutout:
    """Zero out ``n_holes`` square patches of side ``length`` (on a tensor image)."""

    def __init__(self, n_holes: int = 1, length: int = 16) -> None:
        self.n_holes = n_holes
        self.length = length

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        h, w = img.shape[-2:]
        mask = torch.ones(h, w)
        for _ in range(self.n_holes):
            y = int(torch.randint(h, (1,)))
            x = int(torch.randint(w, (1,)))
            y1, y2 = max(y - self.length // 2, 0), min(y + self.length // 2, h)
            x1, x2 = max(x - self.length // 2, 0), min(x + self.length // 2, w)
            mask[y1:y2, x1:x2] = 0.0
        return img * mask


class GaussianNoise:
    def __init__(self, mean: float = 0.0, std: float = 0.15, p: float = 0.5) -> None:
        self.mean, self.std, self.p = mean, std, p

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        if float(torch.rand(1)) > self.p:
            return img
        return img + torch.randn_like(img) * self.std + self.mean


class InstanceNormalization:
    """Normalise each channel of one image by its own mean and std."""

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        c = img.shape[0]
        flat = img.reshape(c, -1)
        mean = flat.mean(1).view(c, 1, 1)
        std = flat.std(1).view(c, 1, 1).clamp_min(1e-8)
        return (img - mean) / std


class RandomTranslation:
    """Resize to 1.125x then random-crop back to the target size."""

    def __init__(self, height: int, width: int, interpolation=InterpolationMode.BILINEAR) -> None:
        self.size = (height, width)
        self.resize = Resize((round(height * 1.125), round(width * 1.125)), interpolation=interpolation)
        self.crop = RandomCrop(self.size)

    def __call__(self, img):
        return self.crop(self.resize(img))


def build_transform(cfg, is_train: bool = True, choices: Optional[Sequence[str]] = None):
    """Build the train or test transform from ``cfg.INPUT`` (Dassl semantics).

    Train: resize to INPUT.SIZE unless a random crop is requested, then the requested
    augmentations, ToTensor, and normalisation. Test: resize the shorter edge to
    max(INPUT.SIZE), center crop, ToTensor, normalisation.
    """
    if cfg.INPUT.NO_TRANSFORM:
        print("Note: no transform is applied!")
        return None
    choices = list(cfg.INPUT.TRANSFORMS if choices is None else choices)
    for choice in choices:
        if choice not in AVAI_CHOICES:
            raise ValueError(
                f'INPUT.TRANSFORMS has unknown transform "{choice}"; choose from {AVAI_CHOICES}'
            )
    if cfg.INPUT.INTERPOLATION not in INTERPOLATION_MODES:
        raise ValueError(
            f'INPUT.INTERPOLATION "{cfg.INPUT.INTERPOLATION}" is not one of {list(INTERPOLATION_MODES)}'
        )
    expected = len(cfg.INPUT.PIXEL_MEAN) == 3 and len(cfg.INPUT.PIXEL_STD) == 3
    if not expected:
        raise ValueError("INPUT.PIXEL_MEAN and INPUT.PIXEL_STD must have 3 values each")
    normalize = Normalize(mean=cfg.INPUT.PIXEL_MEAN, std=cfg.INPUT.PIXEL_STD)
    return _build_train(cfg, choices, normalize) if is_train else _build_test(cfg, choices, normalize)


def _build_train(cfg, choices, normalize):
    print("Building transform_train")
    interp = INTERPOLATION_MODES[cfg.INPUT.INTERPOLATION]
    size = tuple(cfg.INPUT.SIZE)
    tfm = []
    if "random_crop" not in choices and "random_resized_crop" not in choices:
        print(f"+ resize to {size}")
        tfm.append(Resize(size, interpolation=interp))
    if "random_translation" in choices:
        print("+ random translation")
        tfm.append(RandomTranslation(size[0], size[1], interpolation=interp))
    if "random_crop" in choices:
        print(f"+ random crop (padding = {cfg.INPUT.CROP_PADDING})")
        tfm.append(RandomCrop(size, padding=cfg.INPUT.CROP_PADDING))
    if "random_resized_crop" in choices:
        scale = tuple(cfg.INPUT.RRCROP_SCALE)
        print(f"+ random resized crop (size={size}, scale={scale})")
        tfm.append(RandomResizedCrop(size, scale=scale, interpolation=interp))
    if "center_crop" in choices:
        print(f"+ center crop (size: {size})")
        tfm.append(CenterCrop(size))
    if "random_flip" in choices:
        print("+ random flip")
        tfm.append(RandomHorizontalFlip())
    if "imagenet_policy" in choices:
        print("+ imagenet policy")
        tfm.append(AutoAugment(AutoAugmentPolicy.IMAGENET))
    if "randaugment" in choices:
        n, m = cfg.INPUT.RANDAUGMENT_N, cfg.INPUT.RANDAUGMENT_M
        print(f"+ randaugment (n={n}, m={m})")
        tfm.append(RandAugment(num_ops=n, magnitude=m))
    if "colorjitter" in choices:
        i = cfg.INPUT
        print(f"+ color jitter (brightness={i.COLORJITTER_B}, contrast={i.COLORJITTER_C}, "
              f"saturation={i.COLORJITTER_S}, hue={i.COLORJITTER_H})")
        tfm.append(ColorJitter(i.COLORJITTER_B, i.COLORJITTER_C, i.COLORJITTER_S, i.COLORJITTER_H))
    if "randomgrayscale" in choices:
        print("+ random gray scale")
        tfm.append(RandomGrayscale(p=cfg.INPUT.RGS_P))
    if "gaussian_blur" in choices:
        print(f"+ gaussian blur (kernel={cfg.INPUT.GB_K})")
        tfm.append(RandomApply([GaussianBlur(cfg.INPUT.GB_K)], p=cfg.INPUT.GB_P))
    print("+ to torch tensor of range [0, 1]")
    tfm.append(ToTensor())
    if "cutout" in choices:
        print(f"+ cutout (n_holes={cfg.INPUT.CUTOUT_N}, length={cfg.INPUT.CUTOUT_LEN})")
        tfm.append(Cutout(cfg.INPUT.CUTOUT_N, cfg.INPUT.CUTOUT_LEN))
    if "normalize" in choices:
        print(f"+ normalization (mean={cfg.INPUT.PIXEL_MEAN}, std={cfg.INPUT.PIXEL_STD})")
        tfm.append(normalize)
    if "gaussian_noise" in choices:
        print(f"+ gaussian noise (mean={cfg.INPUT.GN_MEAN}, std={cfg.INPUT.GN_STD})")
        tfm.append(GaussianNoise(cfg.INPUT.GN_MEAN, cfg.INPUT.GN_STD))
    if "instance_norm" in choices:
        print("+ instance normalization")
        tfm.append(InstanceNormalization())
    return Compose(tfm)


def _build_test(cfg, choices, normalize):
    print("Building transform_test")
    interp = INTERPOLATION_MODES[cfg.INPUT.INTERPOLATION]
    size = tuple(cfg.INPUT.SIZE)
    print(f"+ resize the smaller edge to {max(size)}")
    tfm = [Resize(max(size), interpolation=interp)]
    print(f"+ {size[0]}x{size[1]} center crop")
    tfm.append(CenterCrop(size))
    print("+ to torch tensor of range [0, 1]")
    tfm.append(ToTensor())
    if "normalize" in choices:
        print(f"+ normalization (mean={cfg.INPUT.PIXEL_MEAN}, std={cfg.INPUT.PIXEL_STD})")
        tfm.append(normalize)
    if "instance_norm" in choices:
        print("+ instance normalization")
        tfm.append(InstanceNormalization())
    return Compose(tfm)
