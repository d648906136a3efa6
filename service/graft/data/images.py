"""Decoding one image into RGB, the same way for scanning, training and Predict."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from graft.errors import InvalidArgument

# Modes whose samples are wider than 8 bits; Pillow's convert("RGB") would clip them.
_WIDE_MODES = frozenset({"I", "I;16", "I;16B", "I;16L", "I;16N", "F"})
_ALPHA_MODES = frozenset({"RGBA", "LA", "La", "RGBa", "PA"})


class ImageDecodeError(InvalidArgument):
    """Bytes or a file that are not a decodable image; the message says what was wrong."""


def load_image(source: Path | bytes) -> Image.Image:
    """Decode `source` fully and return it as an RGB image.

    The first frame of an animation is used, EXIF orientation is applied, grayscale, palette,
    CMYK and 16-bit/float images are converted (wide samples rescaled to 0..255, not
    clipped), and transparent pixels are composited onto white.
    """
    image, _ = decode(source.read_bytes() if isinstance(source, Path) else source)
    return image


def decode(data: bytes) -> tuple[Image.Image, str]:
    """Decode encoded image bytes; returns the RGB image and the file's original PIL mode.

    Raises ImageDecodeError for anything that is not a complete, decodable image.
    """
    if not data:
        raise ImageDecodeError("empty file, not an image")
    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()  # decode every pixel: catches truncated and corrupt data
            mode = im.mode
            rgb = to_rgb(ImageOps.exif_transpose(im))
    except UnidentifiedImageError:
        raise ImageDecodeError(
            f"not a recognised image format (starts with {data[:8]!r})"
        ) from None
    except Image.DecompressionBombError as e:
        raise ImageDecodeError(f"image too large: {e}") from None
    except Exception as e:
        # Untrusted bytes into Pillow's decoders: truncated or corrupt data surfaces as
        # OSError ("image file is truncated"), SyntaxError, ValueError, struct.error and
        # others depending on the plugin. Each is this file's problem, not a server bug.
        reason = str(e) or type(e).__name__
        raise ImageDecodeError(f"corrupt or truncated image: {reason}") from None
    return rgb, mode


def to_rgb(im: Image.Image) -> Image.Image:
    """Convert any PIL mode to 8-bit RGB (see load_image for the rules)."""
    if im.mode == "RGB":
        return im
    if im.mode in _WIDE_MODES:
        arr = np.asarray(im, dtype=np.float64)
        if im.mode.startswith("I;16") or (im.mode == "I" and arr.max(initial=0) > 255):
            arr = arr / 257.0  # 16-bit range
        elif im.mode == "F" and arr.max(initial=0) <= 1.0:
            arr = arr * 255.0  # float in 0..1
        gray = np.clip(np.rint(arr), 0, 255).astype(np.uint8)
        return Image.fromarray(gray).convert("RGB")
    if im.mode == "P" and "transparency" in im.info:
        im = im.convert("RGBA")
    if im.mode in _ALPHA_MODES:
        rgba = im.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return im.convert("RGB")
