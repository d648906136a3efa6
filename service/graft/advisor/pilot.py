"""A pilot fine-tune on the Advise sample: what a fine-tuning strategy reaches on these
images in a few epochs, measured on the same held-out part the linear probe is scored on.

It is the measurement behind a departure from the matrix: when frozen features with a linear
head already match what fine-tuning reaches, feature extraction gives the same accuracy for a
fraction of the time. The pilot trains the model the worker would build (same freezing,
BatchNorm handling, parameter groups and learning rates, augmentation) on the decoded sample
in memory, for PILOT_EPOCHS epochs with a cosine schedule.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from graft.advisor.measure import DecodedSample
from graft.backbones import create_model
from graft.data import eval_transform, train_transform
from graft.domain import TrainingPlan
from graft.training.strategies import apply_strategy, set_train_mode

PILOT_EPOCHS = 4
PILOT_MAX_TRAIN_IMAGES = 640  # bounds the pilot's cost on large samples


@dataclass(frozen=True)
class PilotResult:
    accuracy: float  # on the held-out part
    seconds: float
    epochs: int
    train_images: int
    val_images: int


def pilot_fine_tune(
    plan: TrainingPlan,
    sample: DecodedSample,
    train_idx: Sequence[int],
    val_idx: Sequence[int],
    num_classes: int,
    *,
    epochs: int = PILOT_EPOCHS,
    weights_dir: Path | None = None,
    device: torch.device | str = "cpu",
    seed: int = 0,
) -> PilotResult:
    """Fine-tune `plan` (resolved) on sample[train_idx] and score it on sample[val_idx]."""
    started = time.perf_counter()
    device = torch.device(device)
    gen = torch.Generator().manual_seed(seed)
    train_idx = list(train_idx)
    if len(train_idx) > PILOT_MAX_TRAIN_IMAGES:
        keep = torch.randperm(len(train_idx), generator=gen)[:PILOT_MAX_TRAIN_IMAGES]
        train_idx = [train_idx[i] for i in sorted(keep.tolist())]
    torch.manual_seed(seed)
    model = create_model(plan.backbone, num_classes, weights_dir=weights_dir)
    groups = apply_strategy(model, plan)
    model.to(device).to(memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW(groups)
    batch = max(1, min(plan.batch_size, len(train_idx)))
    steps_per_epoch = math.ceil(len(train_idx) / batch)
    total = max(1, epochs * steps_per_epoch)
    warmup = max(1, steps_per_epoch // 2)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda s: (
            (s + 1) / warmup
            if s < warmup
            else 0.5 * (1 + math.cos(math.pi * (s - warmup) / max(1, total - warmup)))
        ),
    )
    loss_fn = nn.CrossEntropyLoss(label_smoothing=plan.label_smoothing)
    augment = train_transform(model.spec, plan.image_size, plan.augmentation)
    plain = eval_transform(model.spec, plan.image_size)
    labels = torch.tensor(sample.labels)

    def stack(tf: object, idx: Sequence[int]) -> torch.Tensor:
        x = torch.stack([tf(sample.images[i]) for i in idx])  # type: ignore[operator]
        return x.to(device).contiguous(memory_format=torch.channels_last)

    fixed_train = None if plan.augmentation else stack(plain, train_idx)
    for _ in range(epochs):
        set_train_mode(model, plan)
        order = torch.randperm(len(train_idx), generator=gen).tolist()
        for lo in range(0, len(order), batch):
            part = order[lo : lo + batch]
            if fixed_train is not None:
                x = fixed_train[part]
            else:
                x = stack(augment, [train_idx[i] for i in part])
            y = labels[[train_idx[i] for i in part]].to(device)
            loss = loss_fn(model(x).float(), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
    model.eval()
    correct = 0
    with torch.inference_mode():
        val_idx = list(val_idx)
        for lo in range(0, len(val_idx), 128):
            part = val_idx[lo : lo + 128]
            pred = model(stack(plain, part)).argmax(1).cpu()
            correct += int((pred == labels[part]).sum())
    return PilotResult(
        accuracy=correct / max(1, len(val_idx)),
        seconds=time.perf_counter() - started,
        epochs=epochs,
        train_images=len(train_idx),
        val_images=len(val_idx),
    )
