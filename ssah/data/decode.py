"""Decoding one image file into a PIL image of a fixed mode (RGB or L), safely."""
from __future__ import annotations

import io
import os

import numpy as np
from PIL import Image, UnidentifiedImageError

from ..errors import DataError

#: Default pixel limit per image (64 megapixels, e.g. 8000 x 8000). Anything larger is treated
#: as a decompression bomb: a small file that would expand into gigabytes when decoded.
DEFAULT_MAX_PIXELS = 64_000_000

#: File name endings recognised as images by the folder and zip loaders.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp",
                    ".ppm", ".pgm", ".pbm")

_ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")


def is_image_name(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS) and not os.path.basename(name).startswith(".")


def _high_bit_depth_to_l(img: Image.Image) -> Image.Image:
    """Scale a 16/32-bit integer or float image to 8-bit grayscale (PIL would clip instead)."""
    a = np.asarray(img)
    if img.mode.startswith("I;16"):
        a = a.astype(np.float32) / 257.0
    elif img.mode == "F":
        a = a.astype(np.float32)
        if a.size and np.nanmax(a) <= 1.0:
            a = a * 255.0
    else:  # "I": 32-bit signed, usually holding 16-bit data
        a = a.astype(np.float64)
        if a.size and a.max() > 255:
            a = a / 257.0 if a.max() <= 65535 else a * (255.0 / a.max())
    a = np.nan_to_num(a, nan=0.0)
    return Image.fromarray(np.clip(np.rint(a), 0, 255).astype(np.uint8), mode="L")


def to_mode(img: Image.Image, mode: str = "RGB") -> Image.Image:
    """Convert a PIL image of any mode to ``"RGB"`` or ``"L"``.

    Transparent pixels are composited onto white; 16-bit and float images are scaled to
    0..255 rather than clipped; palette, CMYK, YCbCr, 1-bit images are converted by PIL.
    """
    if mode not in ("RGB", "L"):
        raise ValueError(f"mode must be 'RGB' or 'L', not {mode!r}")
    if img.mode == mode:
        return img
    if img.mode in ("I", "F") or img.mode.startswith("I;16"):
        img = _high_bit_depth_to_l(img)
        return img if mode == "L" else img.convert(mode)
    if img.mode in _ALPHA_MODES or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, rgba)
    return img.convert(mode)


def decode_image(data, name: str, mode: str = "RGB",
                 max_pixels: int | None = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Decode ``data`` (bytes, a binary file object, or a path) into a loaded PIL image.

    ``name`` identifies the file in error messages. Raises :class:`DataError` when the file
    cannot be read or decoded, or when its pixel count exceeds ``max_pixels``.
    """
    if isinstance(data, (str, os.PathLike)):
        try:
            with open(data, "rb") as f:
                data = f.read()
        except FileNotFoundError:
            raise DataError(f"image file not found: {name}") from None
        except OSError as e:
            raise DataError(f"cannot read image {name}: {e.strerror or e}") from None
    if isinstance(data, (bytes, bytearray, memoryview)):
        if len(data) == 0:
            raise DataError(f"cannot decode image {name}: the file is empty (0 bytes)")
        data = io.BytesIO(data)
    try:
        img = Image.open(data)
        w, h = img.size
        if max_pixels is not None and w * h > max_pixels:
            raise DataError(f"image {name} is {w}x{h} = {w * h:,} pixels, over the limit of "
                            f"{max_pixels:,} (possible decompression bomb); raise max_pixels "
                            f"if the file is genuine")
        img.load()
        return to_mode(img, mode)
    except DataError:
        raise
    except Image.DecompressionBombError as e:
        raise DataError(f"image {name} rejected as a decompression bomb: {e}") from None
    except UnidentifiedImageError:
        raise DataError(f"cannot decode image {name}: not a recognised image format") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError, IndexError,
            TypeError, KeyError, MemoryError) as e:
        raise DataError(f"cannot decode image {name}: {type(e).__name__}: {e}") from None


def array_to_image(a: np.ndarray, name: str = "array") -> Image.Image:
    """A uint8 ``(H, W)``, ``(H, W, 1)``, ``(H, W, 3)`` or ``(H, W, 4)`` array as a PIL image."""
    a = np.asarray(a)
    if a.dtype != np.uint8:
        raise DataError(f"image {name}: expected a uint8 array, got {a.dtype}")
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[:, :, 0]
    if a.ndim == 2:
        return Image.fromarray(a, mode="L")
    if a.ndim == 3 and a.shape[2] in (3, 4):
        return Image.fromarray(a, mode="RGB" if a.shape[2] == 3 else "RGBA")
    raise DataError(f"image {name}: unsupported array shape {a.shape}")
