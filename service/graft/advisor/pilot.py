"""The advisor's two runs of the training engine on the Advise sample: a pilot fine-tune,
and a few timed training steps.

The pilot is the measurement behind a departure from the matrix: what a fine-tuning
strategy reaches on these images in a few epochs, scored on the same held-out part the
linear probe is scored on; when frozen features with a linear head already match it,
feature extraction gives the same accuracy for a fraction of the time. The timed steps give
the time estimate its cost per training image.

Both run the worker's own engine (graft.training.engine): the same model build, freezing,
head warm-up, BatchNorm handling, AdamW groups and learning rates, schedule shape, loss
(label smoothing, class weights) and step, so they measure what a real run of the plan
does. What differs is only what a pilot must: the data is the decoded sample in memory
(shuffled by the pilot's own seeded generator), and the run is PILOT_EPOCHS epochs long,
with the plan's schedule compressed to that length (warm-up over half an epoch).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import torch

from graft.advisor.advice import PilotResult
from graft.advisor.measure import DecodedSample
from graft.advisor.timing import TIMING_BATCHES
from graft.backbones.spec import PretrainedSpec
from graft.data import eval_transform, train_transform
from graft.data.transforms import Transform
from graft.domain import Strategy, TrainingPlan
from graft.training.engine import (
    Schedule,
    begin_epoch,
    build_model,
    evaluate,
    make_loss,
    make_optimizer,
    make_scheduler,
    synchronize,
    to_device,
    train_epoch,
    train_step,
)
from graft.training.errors import TrainingCancelled

PILOT_EPOCHS = 4
PILOT_MAX_TRAIN_IMAGES = 640  # bounds the pilot's cost on large samples
EVAL_BATCH = 128

Batch = tuple[torch.Tensor, torch.Tensor]


def _never() -> bool:
    return False


def _stack(
    sample: DecodedSample, tf: Transform, idx: Sequence[int], device: torch.device
) -> torch.Tensor:
    x = torch.stack([tf(sample.images[i]) for i in idx])
    return x.to(device).contiguous(memory_format=torch.channels_last)


def pilot_schedule(plan: TrainingPlan, epochs: int, steps_per_epoch: int) -> Schedule:
    """The plan's schedule compressed to a pilot of `epochs` epochs: linear warm-up over
    half an epoch, cosine decay to the pilot's last step, and the base groups starting
    after the plan's head warm-up (full fine-tuning: the head alone for its first epoch)."""
    return Schedule(
        total_steps=max(1, epochs * steps_per_epoch),
        warmup_steps=max(1, steps_per_epoch // 2),
        base_start=min(plan.head_warmup_epochs, epochs) * steps_per_epoch,
    )


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
    should_stop: Callable[[], bool] | None = None,
) -> PilotResult:
    """Fine-tune `plan` (resolved) on sample[train_idx] and score it on sample[val_idx].

    `should_stop()` is asked before every step, between epochs and before the evaluation;
    when it returns True, TrainingCancelled is raised (Advise cancelled)."""
    started = time.perf_counter()
    stop = should_stop or _never
    device = torch.device(device)
    gen = torch.Generator().manual_seed(seed)
    train_idx = _bounded(list(train_idx), gen)
    model = build_model(plan, num_classes, device=device, seed=seed, weights_dir=weights_dir)
    batch, steps_per_epoch = _batching(plan.batch_size, len(train_idx))
    optimizer = make_optimizer(model, plan)
    scheduler = make_scheduler(optimizer, pilot_schedule(plan, epochs, steps_per_epoch))
    loss_fn = make_loss(plan, [sample.labels[i] for i in train_idx], num_classes, device)
    data = _PilotData(plan, model.spec, sample, train_idx, batch, steps_per_epoch, gen, device)
    for epoch in range(epochs):
        if stop():
            raise TrainingCancelled(f"pilot cancelled before epoch {epoch + 1}")
        begin_epoch(model, plan, epoch)
        train_epoch(
            model,
            data.train_batches(),
            optimizer=optimizer,
            scheduler=scheduler,
            loss_fn=loss_fn,
            device=device,
            should_stop=stop,
            epoch=epoch + 1,
        )
    val_idx = list(val_idx)
    metrics = evaluate(
        model,
        data.val_batches(val_idx),
        labels=[str(c) for c in range(num_classes)],
        device=device,
        should_stop=stop,
    )
    return PilotResult(
        accuracy=metrics.accuracy,
        seconds=time.perf_counter() - started,
        epochs=epochs,
        train_images=len(train_idx),
        val_images=len(val_idx),
    )


def _bounded(train_idx: list[int], gen: torch.Generator) -> list[int]:
    """At most PILOT_MAX_TRAIN_IMAGES of `train_idx`, drawn with `gen`, in their order."""
    if len(train_idx) > PILOT_MAX_TRAIN_IMAGES:
        keep = torch.randperm(len(train_idx), generator=gen)[:PILOT_MAX_TRAIN_IMAGES]
        train_idx = [train_idx[i] for i in sorted(keep.tolist())]
    return train_idx


def _batching(batch_size: int, n: int) -> tuple[int, int]:
    """(batch size, steps per epoch) for `n` training images."""
    batch = max(1, min(batch_size, n))
    # The trainer's rule: BatchNorm cannot normalise a last batch of one image.
    drop_last = n > batch and n % batch == 1
    return batch, n // batch if drop_last else math.ceil(n / batch)


class _PilotData:
    """The pilot's batches, built from the decoded sample in memory: training batches in an
    order drawn from the pilot's own generator, validation batches of EVAL_BATCH."""

    def __init__(
        self,
        plan: TrainingPlan,
        spec: PretrainedSpec,
        sample: DecodedSample,
        train_idx: list[int],
        batch: int,
        steps_per_epoch: int,
        gen: torch.Generator,
        device: torch.device,
    ) -> None:
        self.sample, self.train_idx, self.gen, self.device = sample, train_idx, gen, device
        self.batch, self.steps_per_epoch = batch, steps_per_epoch
        self.augment = train_transform(spec, plan.image_size, plan.augmentation)
        self.plain = eval_transform(spec, plan.image_size)
        self.labels = torch.tensor(sample.labels)
        # Without augmentation every epoch sees the same tensors: transform them once.
        self.fixed_train = (
            None if plan.augmentation else _stack(sample, self.plain, train_idx, device)
        )

    def train_batches(self) -> Iterator[Batch]:
        train_idx, batch = self.train_idx, self.batch
        order = torch.randperm(len(train_idx), generator=self.gen).tolist()
        for lo in range(0, self.steps_per_epoch * batch, batch):
            part = order[lo : lo + batch]
            if self.fixed_train is not None:
                x = self.fixed_train[part]
            else:  # augmentation draws from torch's global RNG, seeded by build_model
                x = _stack(self.sample, self.augment, [train_idx[i] for i in part], self.device)
            yield x, self.labels[[train_idx[i] for i in part]]

    def val_batches(self, val_idx: list[int]) -> Iterator[Batch]:
        for lo in range(0, len(val_idx), EVAL_BATCH):
            part = val_idx[lo : lo + EVAL_BATCH]
            yield _stack(self.sample, self.plain, part, self.device), self.labels[part]


def time_training_step(
    plan: TrainingPlan,
    sample: DecodedSample,
    num_classes: int,
    *,
    weights_dir: Path | None = None,
    device: torch.device | str = "cpu",
    should_stop: Callable[[], bool] | None = None,
) -> float:
    """Seconds per image of one optimisation step of `plan` (resolved: backbone, strategy,
    trainable stages, batch and image size), measured with the engine's own model, modes
    (after any head warm-up), optimiser, schedule, loss and step on a batch of sample
    images. The mean of TIMING_BATCHES steps after one warm-up step counts (the mean, not
    the fastest: the estimate should hold for a whole run, competing processes included).
    Preprocessing is not included (see measure.transform_seconds). `should_stop()` is asked
    before every step; True raises TrainingCancelled.
    """
    if plan.strategy == Strategy.FEATURE_EXTRACTION or len(sample) == 0:
        return 0.0
    stop = should_stop or _never
    device = torch.device(device)
    # Unseeded: the timing draws no number anything later depends on.
    model = build_model(plan, num_classes, device=device, seed=None, weights_dir=weights_dir)
    begin_epoch(model, plan, plan.head_warmup_epochs)  # the first epoch that trains the base
    optimizer = make_optimizer(model, plan)
    scheduler = make_scheduler(optimizer, Schedule(TIMING_BATCHES + 1, warmup_steps=1))
    n = len(sample)
    idx = [i % n for i in range(plan.batch_size)]
    targets = [sample.labels[i] for i in idx]
    loss_fn = make_loss(plan, targets, num_classes, device)
    tf = eval_transform(model.spec, plan.image_size)
    x = to_device(torch.stack([tf(sample.images[i]) for i in idx]), device)
    y = torch.tensor(targets, device=device)
    spent = 0.0
    for i in range(TIMING_BATCHES + 1):
        if stop():
            raise TrainingCancelled(f"training-step timing cancelled at step {i + 1}")
        synchronize(device)
        t0 = time.perf_counter()
        train_step(
            model, x, y, optimizer=optimizer, scheduler=scheduler, loss_fn=loss_fn, device=device
        )
        synchronize(device)
        if i:  # the first step is a warm-up (allocations, AdamW state)
            spent += time.perf_counter() - t0
    return spent / (TIMING_BATCHES * plan.batch_size)
