"""Decoding one image into RGB, the same way for scanning, training and Predict.

Images come from outside, so decoding is bounded: the size an image declares in its header
is checked against a pixel budget (and an aspect-ratio limit) before any pixel is decoded,
only common raster formats are opened (never EPS, which Pillow hands to Ghostscript), and
conversion of wide (16-bit, float) samples works in strips instead of float64 copies of
the whole image."""

from __future__ import annotations

import errno
import io
import os
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from graft.data.files import FileProblem, read_regular, real_path
from graft.errors import InvalidArgument, quote

# Config.max_image_pixels' default: the most pixels one image may declare.
DEFAULT_MAX_IMAGE_PIXELS = 50_000_000
# An image may be at most this many times longer than wide (a 5,000,000 x 2 image resized
# to a model's input would need gigabytes).
MAX_ASPECT_RATIO = 100
# The largest image file read from a dataset (a raw 16-bit RGB image at the default budget
# is 300 MB; anything bigger is refused before it is read).
MAX_IMAGE_FILE_BYTES = 320 * 1024 * 1024
# Formats decoded at all; anything else is "not a recognised image format".
FORMATS = ("JPEG", "PNG", "GIF", "BMP", "TIFF", "WEBP", "PPM")  # JPEG includes MPO

# Pillow's own guard agrees with the budget: it refuses more than twice the default while
# opening (DecompressionBombError), and its warning zone (the budget up to twice it) is
# exactly what check_size refuses anyway, so the warning is noise.
Image.MAX_IMAGE_PIXELS = DEFAULT_MAX_IMAGE_PIXELS
warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)

# Modes whose samples are wider than 8 bits; Pillow's convert("RGB") would clip them.
_WIDE_MODES = frozenset({"I", "I;16", "I;16B", "I;16L", "I;16N", "F"})
_ALPHA_MODES = frozenset({"RGBA", "LA", "La", "RGBa", "PA"})
_STRIP_PIXELS = 1 << 18  # wide samples are converted this many pixels at a time


class ImageDecodeError(InvalidArgument):
    """Bytes or a file that are not a decodable image; the message says what was wrong."""


def load_image(source: Path | bytes, max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS) -> Image.Image:
    """Decode `source` fully and return it as an RGB image.

    The first frame of an animation is used, EXIF orientation is applied, grayscale, palette,
    CMYK and 16-bit/float images are converted (wide samples rescaled to 0..255, not
    clipped), and transparent pixels are composited onto white. A file is opened as
    `read_image_file` says (a FIFO or a device is refused, never waited on).
    """
    data = read_image_file(source) if isinstance(source, Path) else source
    image, _ = decode(data, max_pixels)
    return image


def read_image_file(path: Path) -> bytes:
    """The bytes of the image file `path` (an already checked dataset sample: links are
    followed), or ImageDecodeError: opened without blocking, and only when it is a regular
    file of at most MAX_IMAGE_FILE_BYTES. A file that has gone is FileNotFoundError, as
    for any read."""
    try:
        real = real_path(path)
        return read_regular(real, real.parent, MAX_IMAGE_FILE_BYTES)
    except FileProblem as e:
        if e.missing:
            raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), str(path)) from None
        raise ImageDecodeError(f"cannot read {quote(path.name)}: {e.reason}") from None


def check_size(size: tuple[int, int], max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS) -> None:
    """ImageDecodeError when an image of `size` (width, height) must not be decoded: more
    than `max_pixels` pixels, an empty side, or more than MAX_ASPECT_RATIO times longer
    than wide."""
    width, height = size
    if width <= 0 or height <= 0:
        raise ImageDecodeError(f"image declares an empty size ({width}x{height} pixels)")
    if width * height > max_pixels:
        raise ImageDecodeError(
            f"image declares {width}x{height} = {width * height} pixels, more than the "
            f"{max_pixels} allowed (max_image_pixels)"
        )
    if max(width, height) > MAX_ASPECT_RATIO * min(width, height):
        raise ImageDecodeError(
            f"image of {width}x{height} pixels is more than {MAX_ASPECT_RATIO} times longer "
            "than wide"
        )


def header_size(data: bytes) -> tuple[int, int]:
    """(width, height) as the image's header declares it, without decoding a pixel
    (microseconds, whatever the size); ImageDecodeError when it is not an image."""
    with _opened(data) as im:
        return im.size


@contextmanager
def _opened(data: bytes) -> Iterator[Image.Image]:
    """`data` opened by Pillow (the header read, nothing decoded), with the errors of
    untrusted bytes turned into ImageDecodeError."""
    if not data:
        raise ImageDecodeError("empty file, not an image")
    try:
        with Image.open(io.BytesIO(data), formats=FORMATS) as im:
            yield im
    except ImageDecodeError:
        raise
    except UnidentifiedImageError:
        raise ImageDecodeError(
            f"not a recognised image format (starts with {data[:8]!r})"
        ) from None
    except Image.DecompressionBombError as e:  # Pillow's guard: twice the default budget
        raise ImageDecodeError(
            f"image declares more pixels than allowed (max_image_pixels): {e}"
        ) from None
    except MemoryError:
        raise ImageDecodeError("image too large to decode in the memory available") from None
    except Exception as e:
        # Untrusted bytes into Pillow's decoders: truncated or corrupt data surfaces as
        # OSError ("image file is truncated"), SyntaxError, ValueError, struct.error and
        # others depending on the plugin. Each is this file's problem, not a server bug.
        reason = str(e)[:200] or type(e).__name__
        raise ImageDecodeError(f"corrupt or truncated image: {reason}") from None


def decode(data: bytes, max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS) -> tuple[Image.Image, str]:
    """Decode encoded image bytes; returns the RGB image and the file's original PIL mode.

    The declared size is checked (`check_size`) before any pixel is decoded. Raises
    ImageDecodeError for anything that is not a complete, decodable image within budget.
    """
    with _opened(data) as im:
        check_size(im.size, max_pixels)
        im.load()  # decode every pixel: catches truncated and corrupt data
        mode = im.mode
        rgb = to_rgb(ImageOps.exif_transpose(im))
    return rgb, mode


def to_rgb(im: Image.Image) -> Image.Image:
    """Convert any PIL mode to 8-bit RGB (see load_image for the rules)."""
    if im.mode == "RGB":
        return im
    if im.mode in _WIDE_MODES:
        return _wide_to_gray(im).convert("RGB")
    if im.mode == "P" and "transparency" in im.info:
        im = im.convert("RGBA")
    if im.mode in _ALPHA_MODES:
        rgba = im.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return im.convert("RGB")


def _wide_to_gray(im: Image.Image) -> Image.Image:
    """A 16-bit, 32-bit or float image as 8-bit grayscale: 16-bit range divided by 257,
    floats in 0..1 times 255, rounded and clipped. Works a strip of rows at a time, so the
    extra memory is the samples once in their own type plus one byte per pixel (float64
    copies of a whole 9000x9000 image took gigabytes)."""
    arr = np.asarray(im)  # the samples in their own type (uint16, int32 or float32)
    top = float(arr.max(initial=0))
    divide = im.mode.startswith("I;16") or (im.mode == "I" and top > 255)
    multiply = im.mode == "F" and top <= 1.0
    out = np.empty(arr.shape, dtype=np.uint8)
    rows = max(1, _STRIP_PIXELS // max(1, arr.shape[1]))
    for y in range(0, arr.shape[0], rows):
        part = arr[y : y + rows].astype(np.float64)
        if divide:
            part /= 257.0  # 16-bit range
        elif multiply:
            part *= 255.0  # float in 0..1
        np.nan_to_num(part, copy=False)
        np.rint(part, out=part)
        np.clip(part, 0, 255, out=part)
        out[y : y + rows] = part
    return Image.fromarray(out)
