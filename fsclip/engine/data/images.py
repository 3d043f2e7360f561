"""The one function every image read goes through: ``read_image(path)`` -> an 8-bit RGB image.

``convert("RGB")`` alone clips high-bit-depth images instead of scaling them (a 16-bit
greyscale PNG comes out all white, a float image in [0, 1] all black), so those modes are
scaled to 8 bits first:

- ``I;16``, ``I;16L``, ``I;16B``, ``I;16N`` (16-bit greyscale) and ``I`` (32-bit integers,
  which Pillow uses for 16-bit data such as 16-bit PGM files, in 0..65535): ``round(v / 257)``,
  so 65535 -> 255 and an 8-bit image stored as 16 bits (``v * 257``) comes back exactly.
  An ``I`` image with values outside 0..65535 is refused by name.
- ``F`` (32-bit float): values in [0, 1] are scaled by 255; values in [0, 255] with a
  maximum above 1 are taken as 8-bit levels (Pillow's own convention for ``F``); anything
  else (negative, above 255, NaN or infinite) is refused by name.

A file that is missing, corrupt or larger than Pillow's decompression-bomb limit raises one
``ImageReadError`` naming the file and what to do.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, UnidentifiedImageError

from ...errors import DataError

SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")


class ImageReadError(DataError):
    """An image file that exists in a split but cannot be decoded.

    A DataLoader worker's exception is re-raised in the main process as
    ``ImageReadError("Caught ImageReadError in DataLoader worker process N. Original Traceback
    ...")``; the message is cut back to the original one, so the run's ERROR line is the same
    with or without workers.
    """

    def __init__(self, message: str = "") -> None:
        text = str(message)
        marker = f"{type(self).__name__}: "
        if text.startswith("Caught ") and "Original Traceback" in text and marker in text:
            text = text[text.rindex(marker) + len(marker):].strip()
        super().__init__(text)


def _to_8bit(img: Image.Image, path: str) -> Image.Image:
    """An ``L`` image with the levels of a 16-bit or float image scaled to 0..255 (other modes
    are returned unchanged)."""
    if img.mode not in SIXTEEN_BIT_MODES and img.mode != "F":
        return img
    a = np.asarray(img).astype(np.float64)  # [H, W]
    lo, hi = (float(a.min()), float(a.max())) if a.size else (0.0, 0.0)
    if img.mode == "F":
        if not np.isfinite(a).all() or lo < 0 or hi > 255:
            raise ImageReadError(
                f"Cannot read image {path}: a float (mode F) image with values in [{lo:g}, {hi:g}]; "
                f"only [0, 1] or [0, 255] can be mapped to 8 bits. Convert it to an 8-bit image "
                f"(PNG or JPEG) with the levels you want the model to see."
            )
        scale = 255.0 if hi <= 1 else 1.0
    else:
        if lo < 0 or hi > 65535:
            raise ImageReadError(
                f"Cannot read image {path}: a 32-bit integer (mode I) image with values in "
                f"[{lo:g}, {hi:g}], outside the 16-bit range 0..65535 that is scaled to 8 bits. "
                f"Convert it to an 8-bit image (PNG or JPEG)."
            )
        scale = 1.0 / 257.0
    return Image.fromarray(np.clip(np.rint(a * scale), 0, 255).astype(np.uint8), mode="L")


def read_image(path: str) -> Image.Image:
    """Read an image as 8-bit RGB (16-bit and float images scaled, see the module docstring);
    a missing, corrupt or oversized file raises one error naming the file."""
    try:
        with Image.open(path) as img:
            return _to_8bit(img, path).convert("RGB")
    except ImageReadError:  # a FileNotFoundError subclass: before the clause below
        raise
    except FileNotFoundError:
        raise ImageReadError(
            f"Image file not found: {path}. The dataset split lists it; check DATASET.ROOT "
            f"and that the dataset was extracted completely (see docs/datasets.md)."
        ) from None
    except Image.DecompressionBombError as err:
        raise ImageReadError(
            f"Image {path} is too large to decode safely ({err}). Resize it (CLIP sees about "
            f"224 pixels a side), e.g. with ImageMagick: mogrify -resize '4096x4096>' {path} "
            f"(keep a copy of the original elsewhere if you need it)."
        ) from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise ImageReadError(
            f"Cannot decode image {path} ({type(err).__name__}: {err}). The file is corrupt or "
            f"not an image; re-extract or replace it."
        ) from None
