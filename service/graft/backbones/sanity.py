"""Prove a backbone's weights are the real ImageNet ones: classify known photos.

    python -m graft.backbones.sanity [--backbone NAME ...] [--weights-dir DIR] [IMAGE ...]

Without images it uses scikit-image's sample photos `chelsea` (a tabby cat: ImageNet
classes 281-285) and `coffee` (a cup of espresso: class 967). Without `--backbone` it checks
every backbone whose weights are on this host. Prints the top-3 classes and probabilities.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from graft.backbones.factory import create_imagenet_model
from graft.backbones.lookup import get_spec
from graft.backbones.spec import PretrainedSpec
from graft.backbones.weights import backbone_statuses

_RESAMPLE = {"bicubic": Image.Resampling.BICUBIC, "bilinear": Image.Resampling.BILINEAR}


def eval_transform(spec: PretrainedSpec, image: Image.Image) -> torch.Tensor:
    """The evaluation transform of the pretrained weights, as timm and torchvision do it:
    shorter side to floor(input_size / crop_pct), centre crop input_size, normalise."""
    img = image.convert("RGB")
    scale = math.floor(spec.input_size / spec.crop_pct)
    w, h = img.size
    ratio = scale / min(w, h)
    img = img.resize(
        (max(spec.input_size, round(w * ratio)), max(spec.input_size, round(h * ratio))),
        _RESAMPLE[spec.interpolation],
    )
    w, h = img.size
    left, top = (w - spec.input_size) // 2, (h - spec.input_size) // 2
    img = img.crop((left, top, left + spec.input_size, top + spec.input_size))
    x = torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0).permute(2, 0, 1)
    mean = torch.tensor(spec.mean).view(3, 1, 1)
    std = torch.tensor(spec.std).view(3, 1, 1)
    return (x - mean) / std


def top_k(
    net: torch.nn.Module, spec: PretrainedSpec, image: Image.Image, k: int = 3
) -> list[tuple[int, float]]:
    with torch.inference_mode():
        probs = net(eval_transform(spec, image).unsqueeze(0)).softmax(1)[0]
    values, indices = probs.topk(k)
    return [(int(i), float(v)) for i, v in zip(indices, values, strict=True)]


def _sample_images() -> list[tuple[str, Image.Image]]:
    import skimage.data

    return [
        ("skimage.data.chelsea (cat: 281-285)", Image.fromarray(skimage.data.chelsea())),
        ("skimage.data.coffee (espresso: 967)", Image.fromarray(skimage.data.coffee())),
    ]


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backbone", action="append", default=[])
    parser.add_argument("--weights-dir", type=Path, default=None)
    parser.add_argument("images", nargs="*", type=Path)
    args = parser.parse_args(argv)
    names = args.backbone or [s.name for s in backbone_statuses(args.weights_dir) if s.ready]
    images = [(str(p), Image.open(p)) for p in args.images] if args.images else _sample_images()
    torch.set_num_threads(min(2, torch.get_num_threads()))
    for name in names:
        spec = get_spec(name)
        net = create_imagenet_model(name, args.weights_dir)
        for label, image in images:
            top = ", ".join(f"{c} ({p:.3f})" for c, p in top_k(net, spec, image))
            print(f"{name}\t{label}\ttop-3: {top}")


if __name__ == "__main__":
    main()
