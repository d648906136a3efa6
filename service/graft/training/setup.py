"""What a run needs before its first epoch: the data loaders, the checkpoint to resume
from (if one fits), and the opening description of the run."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import (
    BatchSampler,
    DataLoader,
    Dataset,
    RandomSampler,
    SequentialSampler,
    TensorDataset,
)

from graft.backbones.pretrained import PretrainedSpec
from graft.backbones.spec import GraftModel
from graft.data import ImageDataset, Sample, eval_transform, load_image, train_transform
from graft.domain import Strategy, TrainingPlan
from graft.errors import FailedPrecondition
from graft.training import prefix
from graft.training.checkpoint import Checkpoint, CheckpointError, load_checkpoint
from graft.training.engine import predict, to_device
from graft.training.features import (
    feature_key,
    feature_statistics,
    fold_standardization,
    load_or_compute_features,
)
from graft.training.progress import Progress
from graft.training.strategies import frozen_stage_indices, trained_stage_count


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    # Shuffling order depends on (seed, epoch) only, so a resumed epoch sees the same order
    # as an uninterrupted run without storing the generator.
    g = torch.Generator()
    g.manual_seed((seed * 1_000_003 + epoch) % 2**63)
    return g


@dataclass
class TrainingData:
    """A run's data: the training set (images, or standardised features), the validation
    loader, and for feature extraction the standardisation to fold into the head."""

    train: Dataset
    val_loader: DataLoader
    plan: TrainingPlan
    drop_last: bool
    steps_per_epoch: int
    pin_memory: bool
    feature_mean: torch.Tensor | None = None
    feature_std: torch.Tensor | None = None
    # Partial fine-tuning on the frozen stages' outputs (prefix.py): the module that reads
    # them, which is what trains and evaluates; None when the data are images or features.
    suffix: nn.Module | None = None

    def finish_head(self, head: nn.Linear, num_classes: int, device: torch.device) -> torch.Tensor:
        """Feature extraction's end: the kept `head`'s logits on the cached validation
        features, then the standardisation folded into it (features.fold_standardization).
        The logits are the served model's on the validation images — the same body,
        transform and batches computed the features — so calibration and the report read
        them (TrainResult.validation_logits) instead of a second pass over the images."""
        assert self.feature_mean is not None and self.feature_std is not None
        logits, _ = predict(head, self.val_loader, num_classes=num_classes, device=device)
        fold_standardization(head, self.feature_mean, self.feature_std)
        return logits

    def train_loader(self, epoch: int) -> DataLoader:
        return loader(
            self.train,
            self.plan.batch_size,
            generator=epoch_generator(self.plan.seed, epoch),
            drop_last=self.drop_last,
            pin_memory=self.pin_memory,
        )


def loader(
    data: Dataset,
    batch_size: int,
    *,
    generator: torch.Generator | None = None,
    drop_last: bool = False,
    pin_memory: bool = False,
) -> DataLoader:
    """`DataLoader(data, batch_size, shuffle=generator is not None, generator=generator,
    drop_last=drop_last)`: the same batches in the same order. Tensors held in memory
    (cached features, the frozen stages' outputs) are gathered a batch at a time —
    `TensorDataset[indices]` indexes each tensor once — instead of row by row and stacked,
    which cost a quarter of a head epoch on cached features, 2.7 times what this does
    (docs/TRAINING.md § The head's epochs on cached features). The order is the one
    DataLoader's own RandomSampler draws from `generator`, so resumed and distributed runs
    (distributed.py) see the batches a plain DataLoader would (a test compares them)."""
    if not isinstance(data, TensorDataset):
        return DataLoader(
            data,
            batch_size=batch_size,
            shuffle=generator is not None,
            generator=generator,
            drop_last=drop_last,
            num_workers=0,
            pin_memory=pin_memory,
        )
    order = (
        SequentialSampler(data) if generator is None else RandomSampler(data, generator=generator)
    )
    return DataLoader(
        data,
        batch_size=None,  # the sampler yields whole batches of indices; no collation
        sampler=BatchSampler(order, batch_size, drop_last),
        generator=generator,
        num_workers=0,
        pin_memory=pin_memory,
    )


def build_data(
    model: GraftModel,
    plan: TrainingPlan,
    spec: PretrainedSpec,
    *,
    classes: list[str],
    train_samples: Sequence[Sample],
    val_samples: Sequence[Sample],
    dataset_fingerprint: str,
    pretrained: bool,
    checkpoint_dir: Path,
    device: torch.device,
    should_stop: Callable[[], bool],
    progress: Progress,
    distributed: bool = False,
    cache_frozen_stages: bool = True,
) -> TrainingData:
    # num_workers=0: datasets here are small and decoded images are cached in memory after
    # the first epoch (ImageDataset), and on a 2-core host worker processes only compete
    # with the training threads. It also keeps augmentation on the main process's RNG,
    # which the checkpoint saves, so a resumed run draws the same augmentations.
    pin = device.type == "cuda"
    mean: torch.Tensor | None = None
    std: torch.Tensor | None = None
    train_data: Dataset
    val_data: Dataset
    suffix: nn.Module | None = None
    if plan.strategy == Strategy.FEATURE_EXTRACTION:
        train_data, val_data, mean, std = _feature_data(
            model,
            plan,
            spec,
            classes=classes,
            train_samples=train_samples,
            val_samples=val_samples,
            dataset_fingerprint=dataset_fingerprint,
            pretrained=pretrained,
            checkpoint_dir=checkpoint_dir,
            device=device,
            should_stop=should_stop,
            progress=progress,
        )
        drop_last = False  # the head alone has no BatchNorm
    else:
        train_data = ImageDataset(
            train_samples, train_transform(spec, plan.image_size, plan.augmentation)
        )
        val_data = ImageDataset(val_samples, eval_transform(spec, plan.image_size))
        if cache_frozen_stages:
            cached = _frozen_stages(
                model,
                plan,
                spec,
                train_samples,
                val_samples,
                device,
                should_stop,
                progress,
                distributed,
            )
            if cached is not None:
                train_data, val_data, suffix = cached
        # BatchNorm cannot normalise one image whose final feature map is 1x1; drop a last
        # batch of exactly one image (a different one each epoch, as the order is shuffled).
        drop_last = (
            len(train_samples) > plan.batch_size and len(train_samples) % plan.batch_size == 1
        )
    n_train = len(train_samples)
    steps_per_epoch = (
        n_train // plan.batch_size if drop_last else math.ceil(n_train / plan.batch_size)
    )
    val_loader = loader(val_data, plan.batch_size, pin_memory=pin)
    return TrainingData(
        train_data, val_loader, plan, drop_last, steps_per_epoch, pin, mean, std, suffix
    )


def _feature_data(
    model: GraftModel,
    plan: TrainingPlan,
    spec: PretrainedSpec,
    *,
    classes: list[str],
    train_samples: Sequence[Sample],
    val_samples: Sequence[Sample],
    dataset_fingerprint: str,
    pretrained: bool,
    checkpoint_dir: Path,
    device: torch.device,
    should_stop: Callable[[], bool],
    progress: Progress,
) -> tuple[Dataset, Dataset, torch.Tensor, torch.Tensor]:
    """Feature extraction's data: the body's features of every image, computed once and
    cached in `checkpoint_dir` (features.py), standardised; and the standardisation."""
    key = feature_key(
        backbone=plan.backbone,
        image_size=plan.image_size,
        pretrained=pretrained,
        dataset_fingerprint=dataset_fingerprint,
        classes=classes,
        train_samples=train_samples,
        val_samples=val_samples,
        feature_stages=plan.feature_stages,
        feature_grid=plan.feature_grid,
    )
    t0 = time.monotonic()
    features, from_cache = load_or_compute_features(
        model,
        eval_transform(spec, plan.image_size),
        key=key,
        batch_size=plan.batch_size,
        train_samples=train_samples,
        val_samples=val_samples,
        checkpoint_dir=checkpoint_dir,
        device=device,
        should_stop=should_stop,
    )
    counts = f"{len(features.train_y)} train / {len(features.val_y)} val"
    if from_cache:
        msg = f"features read from the cache: {counts}"
    else:
        msg = f"features computed and cached: {counts} ({time.monotonic() - t0:.1f} s)"
    progress.message(msg)
    # The head trains on standardised features (each feature scaled by the training
    # features' mean and spread), as a linear probe does: pooled stage outputs differ in
    # scale by orders of magnitude, and unscaled they train far worse in the same
    # epochs. The scaling is folded into the head at the end, so the served model is
    # the plain body + Linear (fold_standardization).
    mean, std = feature_statistics(features.train_x)
    train_data = TensorDataset((features.train_x - mean) / std, features.train_y)
    val_data = TensorDataset((features.val_x - mean) / std, features.val_y)
    return train_data, val_data, mean, std


def _frozen_stages(
    model: GraftModel,
    plan: TrainingPlan,
    spec: PretrainedSpec,
    train_samples: Sequence[Sample],
    val_samples: Sequence[Sample],
    device: torch.device,
    should_stop: Callable[[], bool],
    progress: Progress,
    distributed: bool,
) -> tuple[Dataset, Dataset, nn.Module] | None:
    """The frozen stages' outputs of the training and validation images, and the module
    that trains on them (prefix.py); None, with a message saying why when the plan would
    have allowed it, when the run trains on images."""
    if prefix.why_not(plan, distributed):
        return None
    t0 = time.monotonic()
    tf = eval_transform(spec, plan.image_size)
    probe = torch.stack([tf(load_image(s.path)) for s in train_samples[:4]])
    parts = prefix.split(
        model, plan, to_device(probe, device), len(train_samples) + len(val_samples)
    )
    if isinstance(parts, str):
        progress.message(f"the frozen stages run every epoch: {parts}")
        return None
    modules, suffix = parts
    (train_x, train_y), (val_x, val_y) = (
        prefix.frozen_outputs(
            model,
            modules,
            part,
            tf,
            batch_size=plan.batch_size,
            device=device,
            should_stop=should_stop,
        )
        for part in (train_samples, val_samples)
    )
    frozen = len(frozen_stage_indices(model, plan))
    progress.message(
        f"frozen stages 1-{frozen} computed once ({len(train_x)} train / {len(val_x)} val "
        f"images, {(train_x.numel() + val_x.numel()) * 4 / 2**20:,.0f} MiB, "
        f"{time.monotonic() - t0:.1f} s): each epoch runs the trained stages and the head"
    )
    return TensorDataset(train_x, train_y), TensorDataset(val_x, val_y), suffix


def usable_checkpoint(
    directory: Path,
    plan: TrainingPlan,
    fingerprint: str,
    classes: list[str],
    pretrained: bool,
    update_bn: bool,
) -> Checkpoint | str:
    """The checkpoint to resume from, or why there is none ("" when there is simply none)."""
    try:
        ckpt = load_checkpoint(directory)
    except CheckpointError as e:
        return f"ignoring an unreadable checkpoint, starting over: {e}"
    if ckpt is None:
        return ""
    why = ckpt.mismatch(plan, fingerprint, classes)
    if not why and ckpt.extra.get("pretrained", pretrained) != pretrained:
        why = "it was trained from different initial weights"
    if not why and ckpt.extra.get("update_bn_statistics", update_bn) != update_bn:
        why = "it was trained with a different BatchNorm statistics setting"
    if why:
        return f"ignoring the checkpoint in {directory}, starting over: {why}"
    return ckpt


def describe(
    model: GraftModel,
    plan: TrainingPlan,
    n_train: int,
    n_val: int,
    device: torch.device,
    update_bn_statistics: bool,
) -> str:
    n_stages = len(model.spec.stages)
    trained = trained_stage_count(model, plan)
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    what = {
        Strategy.FULL_FINE_TUNE: "full fine-tune",
        Strategy.PARTIAL_FINE_TUNE: f"partial fine-tune, top {trained} of {n_stages} stages",
        Strategy.FEATURE_EXTRACTION: "feature extraction, head only"
        + (
            f", on the pooled outputs of stages {', '.join(map(str, plan.feature_stages))}"
            + (
                f" (each over a {plan.feature_grid}x{plan.feature_grid} grid)"
                if plan.feature_grid > 1
                else ""
            )
            if plan.feature_stages
            else ""
        ),
    }[plan.strategy]
    warm = (
        f", head alone for the first {plan.head_warmup_epochs} epoch(s)"
        if plan.head_warmup_epochs and plan.strategy != Strategy.FEATURE_EXTRACTION
        else ""
    )
    if plan.strategy != Strategy.FEATURE_EXTRACTION:
        warm += ", BatchNorm statistics " + ("updated" if update_bn_statistics else "kept")
    return (
        f"training {plan.backbone} ({what}{warm}): {trainable:,} of {total:,} parameters "
        f"trainable; {n_train} train / {n_val} val images at {plan.image_size} px on {device}"
    )


def check_inputs(
    plan: TrainingPlan,
    classes: list[str],
    train_samples: Sequence[Sample],
    val_samples: Sequence[Sample],
) -> None:
    if (
        plan.strategy == Strategy.UNSPECIFIED
        or min(plan.epochs, plan.batch_size, plan.image_size) < 1
        or not plan.backbone
    ):
        raise ValueError(f"train() needs a resolved plan (see resolve_plan), got {plan}")
    if len(classes) < 2:
        raise FailedPrecondition(f"training needs at least 2 classes, got {len(classes)}")
    if not train_samples:
        raise FailedPrecondition("no training images")
    if not val_samples:
        raise FailedPrecondition(
            "no validation images: every class has a single image, or the split left none"
        )
