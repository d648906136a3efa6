"""THE preprocessing: training and Predict both build their transforms here from the
backbone's PretrainedSpec, so a served model sees exactly what it was trained on."""

from __future__ import annotations

from collections.abc import Callable

import torch
from PIL import Image
from torchvision import transforms as T
from torchvision.transforms import InterpolationMode

from graft.backbones.spec import PretrainedSpec

Transform = Callable[[Image.Image], torch.Tensor]

_INTERPOLATION = {
    "nearest": InterpolationMode.NEAREST,
    "bilinear": InterpolationMode.BILINEAR,
    "bicubic": InterpolationMode.BICUBIC,
    "box": InterpolationMode.BOX,
    "hamming": InterpolationMode.HAMMING,
    "lanczos": InterpolationMode.LANCZOS,
}


def interpolation_mode(name: str) -> InterpolationMode:
    try:
        return _INTERPOLATION[name.lower()]
    except KeyError:
        raise ValueError(
            f"unknown interpolation {name!r}; expected one of {sorted(_INTERPOLATION)}"
        ) from None


def resize_size(spec: PretrainedSpec, image_size: int) -> int:
    """Shorter side before the centre crop: image_size / crop_pct, rounded."""
    crop_pct = spec.crop_pct if spec.crop_pct > 0 else 1.0
    return max(image_size, round(image_size / crop_pct))


def _normalize(spec: PretrainedSpec) -> list[Callable[..., torch.Tensor]]:
    return [T.ToTensor(), T.Normalize(mean=list(spec.mean), std=list(spec.std))]


def eval_transform(spec: PretrainedSpec, image_size: int) -> Transform:
    """Resize the shorter side to round(image_size / crop_pct) with the spec's
    interpolation, centre-crop image_size, scale to [0, 1], normalise with mean/std.
    Returns a float tensor (3, image_size, image_size)."""
    if image_size <= 0:
        raise ValueError(f"image_size must be positive, got {image_size}")
    mode = interpolation_mode(spec.interpolation)
    return T.Compose(
        [
            T.Resize(resize_size(spec, image_size), interpolation=mode),
            T.CenterCrop(image_size),
            *_normalize(spec),
        ]
    )


def train_transform(spec: PretrainedSpec, image_size: int, augment: bool) -> Transform:
    """With `augment`: RandomResizedCrop(image_size, scale=(0.6, 1)), horizontal flip and a
    mild colour jitter, then the same normalisation; without it, exactly eval_transform."""
    if not augment:
        return eval_transform(spec, image_size)
    mode = interpolation_mode(spec.interpolation)
    return T.Compose(
        [
            T.RandomResizedCrop(image_size, scale=(0.6, 1.0), interpolation=mode),
            T.RandomHorizontalFlip(),
            T.ColorJitter(brightness=0.2, contrast=0.2, saturation=0.2),
            *_normalize(spec),
        ]
    )
