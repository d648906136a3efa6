"""Predict's preprocessing: exactly graft.data.eval_transform, split so that most of its
cost is paid once per batch instead of once per image.

eval_transform (torchvision on PIL: Resize, CenterCrop, ToTensor, Normalize) took ~230 µs
per 28-64 px image here, mostly in ToTensor and Normalize's per-image tensor overhead.
`decode` runs in the decode pool and does the PIL part (the same torchvision functions on
the same image), ending in a uint8 HWC array; `to_batch` stacks a forward pass's arrays and
converts and normalises them with the same float operations in the same order, so the
result is bit-identical (tests/unit/test_predict_runtimes.py checks it).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torchvision.transforms import functional as TF

from graft.backbones.spec import PretrainedSpec
from graft.data import load_image
from graft.data.images import DEFAULT_MAX_IMAGE_PIXELS, ImageDecodeError, header_size
from graft.data.transforms import interpolation_mode, resize_size
from graft.errors import ResourceExhausted

# Config.max_predict_pixels' default: the most pixels one Predict request may declare.
DEFAULT_MAX_REQUEST_PIXELS = 200_000_000


def check_request_pixels(
    images: Sequence[bytes],
    max_pixels: int = DEFAULT_MAX_REQUEST_PIXELS,
    max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
) -> int:
    """The pixels a Predict request's images declare in their headers, summed; raises
    ResourceExhausted when that is more than `max_pixels` (Config.max_predict_pixels).

    Only headers are read (tens of microseconds an image, whatever it declares), so call
    it before decoding. Images that are not images, or that declare more than
    `max_image_pixels` (Config.max_image_pixels) on their own, count 0: `Preprocess.decode`
    fails each of them alone, with INVALID_ARGUMENT in its own entry."""
    total = 0
    for data in images:
        try:
            width, height = header_size(data)
        except ImageDecodeError:
            continue
        if 0 < width * height <= max_image_pixels:
            total += width * height
    if total > max_pixels:
        raise ResourceExhausted(
            f"the request's {len(images)} images declare {total} pixels in all, more than "
            f"the {max_pixels} one Predict call may decode (max_predict_pixels); send fewer "
            "or smaller images per call"
        )
    return total


class Preprocess:
    """Decode + resize + centre crop per image; tensor conversion + normalisation per batch."""

    def __init__(
        self,
        spec: PretrainedSpec,
        image_size: int,
        *,
        max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
    ) -> None:
        if image_size <= 0:
            raise ValueError(f"image_size must be positive, got {image_size}")
        self.image_size = image_size
        self.max_pixels = max_pixels  # per image, checked from the header (max_image_pixels)
        self._resize = [resize_size(spec, image_size)]
        self._mode = interpolation_mode(spec.interpolation)
        self._mean = tuple(float(m) for m in spec.mean)
        self._std = tuple(float(s) for s in spec.std)

    def decode(self, data: bytes) -> np.ndarray:
        """One encoded image as a uint8 (image_size, image_size, 3) array; ImageDecodeError
        (an InvalidArgument) for bytes that are not a complete image, and for an image whose
        header declares more than `max_pixels` or an extreme aspect ratio (refused before
        decoding: graft.data.images.check_size)."""
        image = load_image(data, self.max_pixels)
        try:
            image = TF.resize(image, self._resize, interpolation=self._mode)
        except MemoryError:  # this image's problem, not the batch's
            raise ImageDecodeError("image too large to resize in the memory available") from None
        image = TF.center_crop(image, [self.image_size])
        return np.asarray(image, dtype=np.uint8)

    def to_batch(self, arrays: Sequence[np.ndarray]) -> torch.Tensor:
        """(N, 3, H, W) float32, contiguous, normalised as eval_transform does (ToTensor's
        `/ 255`, then Normalize's `- mean`, `/ std`), one channel plane at a time: scalar
        operands are the fast path (a broadcast (1, 3, 1, 1) operand was 3x slower)."""
        x = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()
        x = x.to(dtype=torch.float32).div_(255)
        for c, (mean, std) in enumerate(zip(self._mean, self._std, strict=True)):
            x[:, c].sub_(mean).div_(std)
        return x
