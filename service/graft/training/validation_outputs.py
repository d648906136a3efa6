"""The kept model's outputs on its validation split, image by image: what temperature
scaling is fitted on and the model report's label-noise suspects are ranked by.

The model is the one training returns (loop.TrainResult.model): the whole network, taking
images, whatever the strategy. For feature extraction training evaluated the head on cached
body features; the returned model has the body in front of that head (and the features'
standardisation folded into it, features.fold_standardization), so it takes the same
eval-transformed images as full and partial fine-tuning, feature cuts included (the
GraftModel computes its own cut). Images go through training's eval transform, as in
training's own validation (setup.build_data).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from graft.backbones import get_spec
from graft.data import ImageDataset, Sample, eval_transform
from graft.domain import TrainingPlan
from graft.training.engine import predict


@dataclass(frozen=True)
class ValidationOutputs:
    """Logits (N x C, fp32, CPU, at temperature 1) and targets (N) of `samples`, in order."""

    logits: torch.Tensor
    targets: torch.Tensor
    samples: tuple[Sample, ...]

    def losses(self) -> torch.Tensor:
        """Each image's cross-entropy at temperature 1 (N)."""
        return F.cross_entropy(self.logits.double(), self.targets, reduction="none")


def validation_outputs(
    model: nn.Module,
    plan: TrainingPlan,
    samples: Sequence[Sample],
    *,
    num_classes: int,
    device: torch.device,
    should_stop: Callable[[], bool] = lambda: False,
    logits: torch.Tensor | None = None,
) -> ValidationOutputs:
    """`model`'s outputs on `samples` (the validation split), computed on `device` in the
    plan's batches. The model is back on the CPU afterwards, as training returned it.
    `logits`: the model's logits on `samples` as training already computed them
    (TrainResult.validation_logits); then nothing runs."""
    if logits is not None:
        if logits.shape != (len(samples), num_classes):
            raise ValueError(
                f"{tuple(logits.shape)} validation logits for {len(samples)} images "
                f"of {num_classes} classes"
            )
        targets = torch.tensor([s.label for s in samples], dtype=torch.long)
        return ValidationOutputs(logits.float().cpu(), targets, tuple(samples))
    dataset = ImageDataset(samples, eval_transform(get_spec(plan.backbone), plan.image_size))
    loader = DataLoader(dataset, batch_size=plan.batch_size, shuffle=False)
    model.to(device)
    try:
        logits, targets = predict(
            model, loader, num_classes=num_classes, device=device, should_stop=should_stop
        )
    finally:
        model.to("cpu")
    return ValidationOutputs(logits, targets.long(), tuple(samples))
