"""Feature extraction throughput against the data loader's decode limit.

Writes ``--images`` JPEGs of 500x375 (ImageNet's typical size) once, then measures, side by side
in one run, images/s of

- ``decode``: the data loader alone (read, decode, CLIP's test transform to 224 px, batching;
  ``--workers`` processes), the ceiling any extraction can reach;
- ``extract``: the feature cache's extraction (``fsclip.adapt.extract.extract_views``: the same
  loader plus the frozen image encoder of a release-shaped CLIP, ``--release``, in ``--prec``).

``extract / decode`` near 1 means the encoder keeps up with decoding (add workers to go faster);
well below 1, the encoder is the limit.

    python benchmarks/extract_throughput.py --release ViT-B/16 --prec fp16 --workers 8
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def write_images(folder: str, n: int) -> list:
    import numpy as np
    from PIL import Image

    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(0)
    paths = []
    for i in range(n):
        path = os.path.join(folder, f"{i:05d}.jpg")
        if not os.path.isfile(path):
            # smooth random content (noise would decode unusually slowly)
            small = rng.integers(0, 256, (24, 32, 3), dtype=np.uint8)
            Image.fromarray(small).resize((500, 375), Image.BICUBIC).save(path + ".tmp.jpg", quality=90)
            os.replace(path + ".tmp.jpg", path)
        paths.append(path)
    return paths


def main() -> int:
    from torch.utils.data import DataLoader

    from fsclip.adapt.extract import ViewDataset, extract_views
    from fsclip.clip.loader import load_clip
    from fsclip.clip.real_sizes import write_real_size_weights
    from fsclip.engine.config import get_cfg_default
    from fsclip.engine.data.transforms import build_transform

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--release", default="ViT-B/16")
    p.add_argument("--prec", default="fp16", choices=["fp32", "fp16", "amp"])
    p.add_argument("--images", type=int, default=512)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1))
    p.add_argument("--work", default=os.path.join(tempfile.gettempdir(), "fsclip_realsize"))
    args = p.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    os.environ.setdefault("FSCLIP_CPU_HALF", "1")

    paths = write_images(os.path.join(args.work, "jpeg500x375"), args.images)
    cfg = get_cfg_default()
    cfg.INPUT.SIZE = (224, 224)
    cfg.INPUT.INTERPOLATION = "bicubic"
    cfg.INPUT.PIXEL_MEAN = [0.48145466, 0.4578275, 0.40821073]
    cfg.INPUT.PIXEL_STD = [0.26862954, 0.26130258, 0.27577711]
    transform = build_transform(cfg, is_train=False)

    loader = DataLoader(ViewDataset(paths, transform), batch_size=args.batch, num_workers=args.workers)
    t = time.perf_counter()
    for _ in loader:
        pass
    decode = len(paths) / (time.perf_counter() - t)

    weights = write_real_size_weights(args.release, os.path.join(args.work, "weights"))
    model = load_clip(weights, device=device, precision=args.prec)
    visual = model.visual

    def trunk(x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device.type, dtype=torch.float16, enabled=args.prec == "amp"):
            return visual(x.to(model.dtype))

    extract_views(trunk, paths[: args.batch], transform, 1, 0, args.batch, 0, device, desc="warm-up")
    if device.type == "cuda":
        torch.cuda.synchronize()
    t = time.perf_counter()
    extract_views(trunk, paths, transform, 1, 0, args.batch, args.workers, device, desc="extract")
    if device.type == "cuda":
        torch.cuda.synchronize()
    extract = len(paths) / (time.perf_counter() - t)
    print(f"extraction {args.release} {args.prec} on {device.type}, {args.images} JPEGs 500x375, "
          f"{args.workers} workers: decode {decode:.0f} img/s, extract {extract:.0f} img/s, "
          f"extract / decode {extract / decode:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
