"""Turning what callers hold into encoded image bytes for Predict.

Accepted: a path (str or os.PathLike) to an image file, encoded bytes, a PIL image
(saved as PNG) or a numpy uint8 array HxW / HxWx1 / HxWx2 / HxWx3 / HxWx4 (written as PNG
by the small writer below). PIL and numpy are never imported here: an object is treated
as one of theirs only when its module is already loaded, which it must be for the caller
to have made the object.
"""

from __future__ import annotations

import io
import os
import struct
import sys
import zlib
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from graft_client.v1 import adaptation_pb2 as pb

# A path (str or os.PathLike), encoded bytes, a PIL.Image.Image, a numpy.ndarray or a
# pb.Image; Any because the PIL and numpy types cannot be named without importing them.
ImageInput = Any

__all__ = ["ImageInput", "encode_png", "to_image_bytes", "to_pb_images"]

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# PNG colour type by number of channels: grey, grey+alpha, RGB, RGBA.
_COLOR_TYPE = {1: 0, 2: 4, 3: 2, 4: 6}
# Modes PIL can write as PNG unchanged; everything else is converted to RGB(A) first.
_PNG_MODES = {"1", "L", "LA", "I", "I;16", "P", "RGB", "RGBA"}


def _chunk(kind: bytes, data: bytes) -> bytes:
    crc = zlib.crc32(kind + data) & 0xFFFFFFFF
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)


def encode_png(pixels: bytes, width: int, height: int, channels: int, level: int = 6) -> bytes:
    """Encodes 8-bit pixels (row-major, `channels` interleaved bytes per pixel) as PNG."""
    if channels not in _COLOR_TYPE:
        raise ValueError(f"PNG needs 1, 2, 3 or 4 channels, got {channels}")
    if width <= 0 or height <= 0:
        raise ValueError(f"image must be at least 1x1, got {width}x{height}")
    stride = width * channels
    if len(pixels) != stride * height:
        raise ValueError(f"expected {stride * height} bytes for {width}x{height}x{channels}")
    # Each scanline is prefixed with filter type 0 (None).
    raw = b"".join(b"\x00" + pixels[y * stride : (y + 1) * stride] for y in range(height))
    header = struct.pack(">IIBBBBB", width, height, 8, _COLOR_TYPE[channels], 0, 0, 0)
    return b"".join(
        (
            _PNG_SIGNATURE,
            _chunk(b"IHDR", header),
            _chunk(b"IDAT", zlib.compress(raw, level)),
            _chunk(b"IEND", b""),
        )
    )


def _is_instance_of(obj: object, module: str, name: str) -> bool:
    mod = sys.modules.get(module)
    cls = getattr(mod, name, None) if mod is not None else None
    return isinstance(cls, type) and isinstance(obj, cls)


def _ndarray_to_png(array: Any) -> bytes:
    if str(array.dtype) != "uint8":
        raise TypeError(
            f"numpy images must be uint8 (got {array.dtype}); "
            "scale and convert first, e.g. (x * 255).clip(0, 255).astype('uint8')"
        )
    if array.ndim == 2:
        height, width = array.shape
        channels = 1
    elif array.ndim == 3 and array.shape[2] in _COLOR_TYPE:
        height, width, channels = array.shape
    else:
        raise ValueError(f"numpy images must be HxW or HxWxC with C in 1..4, got {array.shape}")
    return encode_png(array.tobytes(order="C"), int(width), int(height), int(channels))


def _pil_to_png(image: Any) -> bytes:
    if image.mode not in _PNG_MODES:
        image = image.convert("RGBA" if "A" in image.getbands() else "RGB")
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def to_image_bytes(image: ImageInput) -> bytes:
    """Encoded bytes for one image input (see the module docstring for what is accepted)."""
    if isinstance(image, bytes):
        return image
    if isinstance(image, bytearray | memoryview):
        return bytes(image)
    if isinstance(image, pb.Image):
        return image.data
    if isinstance(image, str | os.PathLike):
        return Path(image).read_bytes()
    if _is_instance_of(image, "numpy", "ndarray"):
        return _ndarray_to_png(image)
    if _is_instance_of(image, "PIL.Image", "Image"):
        return _pil_to_png(image)
    raise TypeError(
        f"cannot send {type(image).__name__} as an image: pass a path, encoded bytes, "
        "a PIL image or a uint8 numpy array"
    )


def to_pb_images(images: Iterable[ImageInput]) -> list[pb.Image]:
    """pb.Image messages for a sequence of image inputs, in order."""
    single = isinstance(images, str | bytes | os.PathLike | pb.Image) or _is_instance_of(
        images, "PIL.Image", "Image"
    )
    if _is_instance_of(images, "numpy", "ndarray"):
        single = getattr(images, "ndim", 0) != 4  # an N x H x W x C batch iterates fine
    if single:
        raise TypeError("images must be a sequence of images, not a single image")
    return [
        image if isinstance(image, pb.Image) else pb.Image(data=to_image_bytes(image))
        for image in images
    ]
