"""Feature extraction (strategy 3): the body is a fixed function, so run it once.

Each training and validation image goes through the frozen body exactly once (eval
transform, no augmentation: augmented copies would each need their own forward pass, which
is the cost this strategy exists to avoid). The features are what the head reads,
`GraftModel.features`: the body's pooled output, or with a feature cut (`plan.feature_stages`)
the chosen stages' pooled outputs concatenated. They are cached in
`checkpoint_dir/features.safetensors`; the head then trains on them for `plan.epochs` epochs
in milliseconds per epoch, and a resumed job reads the cache instead of recomputing it.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn
from torch.utils.data import DataLoader

from graft.artifacts import CorruptArtifact, verify_file, write_artifact
from graft.backbones.spec import GraftModel
from graft.data import ImageDataset, Sample
from graft.training.errors import TrainingCancelled

log = logging.getLogger(__name__)

FEATURES_FILE = "features.safetensors"
_META_KEY = "graft.features"


@dataclass
class FeatureSet:
    """Features the head reads (float32, N x head.in_features) with their integer labels."""

    train_x: torch.Tensor
    train_y: torch.Tensor
    val_x: torch.Tensor
    val_y: torch.Tensor


def feature_key(
    *,
    backbone: str,
    image_size: int,
    pretrained: bool,
    dataset_fingerprint: str,
    classes: Sequence[str],
    train_samples: Sequence[Sample],
    val_samples: Sequence[Sample],
    feature_stages: Sequence[int] = (),
    feature_grid: int = 1,
) -> str:
    """Identity of a feature cache: everything the features depend on, hashed. The sample
    lists are part of it because the split (validation fraction, seed) decides which image
    lands where; the feature cut because it decides what a feature is."""
    identity: dict[str, object] = {
        "backbone": backbone,
        "image_size": image_size,
        "pretrained": pretrained,
        "fingerprint": dataset_fingerprint,
        "classes": list(classes),
    }
    if feature_stages:  # absent without a cut: caches written before cuts existed still fit
        identity["feature_stages"] = [int(s) for s in feature_stages]
    if feature_grid > 1:  # likewise absent for global pooling
        identity["feature_grid"] = int(feature_grid)
    h = hashlib.sha256()
    h.update(json.dumps(identity, sort_keys=True).encode())
    for split, samples in (("train", train_samples), ("val", val_samples)):
        for s in samples:
            h.update(f"{split}\0{s.path}\0{s.label}\n".encode())
    return h.hexdigest()


@torch.inference_mode()
def compute_features(
    model: GraftModel,
    samples: Sequence[Sample],
    transform: Callable[..., torch.Tensor],
    *,
    batch_size: int,
    device: torch.device,
    should_stop: Callable[[], bool],
    forward: Callable[[torch.Tensor], torch.Tensor] | None = None,
    what: str = "features",
) -> tuple[torch.Tensor, torch.Tensor]:
    """(features float32 on CPU, labels int64) of `samples`: `model.features` (the head's
    input, so a feature cut applies) with the model in eval mode; or `forward` of each
    batch instead (partial fine-tuning's frozen stages: prefix.py), `what` naming it in
    the cancellation's message. Inference tensors: clone them before autograd reads them."""
    model.eval()
    forward = forward or model.features
    loader = DataLoader(
        ImageDataset(samples, transform),
        batch_size=batch_size,
        shuffle=False,
        num_workers=0,
        pin_memory=device.type == "cuda",
    )
    feats: list[torch.Tensor] = []
    labels: list[torch.Tensor] = []
    for images, targets in loader:
        if should_stop():
            raise TrainingCancelled(f"cancelled while computing {what}")
        images = images.to(device, non_blocking=True, memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            out = forward(images)
        # Move to CPU per batch: the cache is written from CPU memory, and this keeps GPU
        # memory flat. (The copy syncs with the GPU once per batch, which is fine here.)
        feats.append(out.float().cpu())
        labels.append(targets.long())
    width = feats[0].shape[1] if feats else 0
    x = torch.cat(feats) if feats else torch.zeros(0, width)
    y = torch.cat(labels) if labels else torch.zeros(0, dtype=torch.long)
    return x, y


def save_features(path: Path, features: FeatureSet, key: str) -> None:
    """Write the cache atomically, its sha256 beside it (graft.artifacts)."""
    tensors = {
        "train_x": features.train_x.contiguous(),
        "train_y": features.train_y.contiguous(),
        "val_x": features.val_x.contiguous(),
        "val_y": features.val_y.contiguous(),
    }
    write_artifact(path, lambda tmp: save_file(tensors, str(tmp), metadata={_META_KEY: key}))


def load_features(path: Path, key: str) -> FeatureSet | None:
    """The cached features when `path` holds them for `key`; None otherwise."""
    if not path.is_file():
        return None
    try:
        verify_file(path)
    except CorruptArtifact as e:
        log.warning("recomputing the features: %s", e.message)
        return None
    try:
        with safe_open(str(path), framework="pt") as f:
            if (f.metadata() or {}).get(_META_KEY) != key:
                return None
            return FeatureSet(
                train_x=f.get_tensor("train_x"),
                train_y=f.get_tensor("train_y"),
                val_x=f.get_tensor("val_x"),
                val_y=f.get_tensor("val_y"),
            )
    except Exception:  # a torn or foreign file: recompute
        return None


def load_or_compute_features(
    model: GraftModel,
    transform: Callable[..., torch.Tensor],
    *,
    key: str,
    batch_size: int,
    train_samples: Sequence[Sample],
    val_samples: Sequence[Sample],
    checkpoint_dir: Path,
    device: torch.device,
    should_stop: Callable[[], bool],
) -> tuple[FeatureSet, bool]:
    """(features, True when they came from the cache). Computes and caches them otherwise."""
    path = checkpoint_dir / FEATURES_FILE
    cached = load_features(path, key)
    if cached is not None:
        return cached, True
    tx, ty = compute_features(
        model,
        train_samples,
        transform,
        batch_size=batch_size,
        device=device,
        should_stop=should_stop,
    )
    vx, vy = compute_features(
        model,
        val_samples,
        transform,
        batch_size=batch_size,
        device=device,
        should_stop=should_stop,
    )
    features = FeatureSet(tx, ty, vx, vy)
    save_features(path, features, key)
    return features, False


def feature_statistics(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-feature mean and standard deviation of training features. The deviation is
    floored at a tenth of the median deviation of the channels that vary: a channel
    (almost) constant on the training images — a ReLU that never fired there — would
    otherwise be scaled up by 1e6 and turn a small value on a new image into a huge logit.
    The median is over the varying channels because at 32 px most of a network's last
    channels can be dead on every training image: the median over all of them was 0, the
    floor 1e-6, and validation losses near 2,000 (found by the CompareModels tests)."""
    std = x.std(0, unbiased=False)
    varying = std[std > 1e-12]
    floor = max(1e-6, 0.1 * float(varying.median())) if varying.numel() else 1.0
    return x.mean(0), std.clamp_min(floor)


@torch.no_grad()
def fold_standardization(head: nn.Linear, mean: torch.Tensor, std: torch.Tensor) -> None:
    """Make `head` take raw features: W((x - m) / s) + b = (W / s) x + (b - W (m / s))."""
    mean = mean.to(head.weight.device, head.weight.dtype)
    std = std.to(head.weight.device, head.weight.dtype)
    assert head.bias is not None
    head.bias.sub_(head.weight @ (mean / std))
    head.weight.div_(std)
