"""The training loop: `train_one_epoch`, and `train`, which runs a job.

Read it top to bottom: `train` builds the model and the data, restores a checkpoint when one
fits, then for each epoch trains, evaluates, keeps the best weights and checkpoints. Full
and partial fine-tuning train the whole model on images; feature extraction trains only the
head, on body features computed once (features.py). Both go through the same engine
(engine.py: model, optimiser, schedule, loss, step, evaluate), which the advisor's pilot
uses too.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import torch
from torch import nn
from torch.optim.lr_scheduler import LambdaLR
from torch.utils.data import DataLoader, Dataset, TensorDataset

from graft.backbones import get_spec
from graft.backbones.spec import GraftModel
from graft.data import ImageDataset, Sample, eval_transform, train_transform
from graft.domain import (
    EvaluationMetrics,
    EventKind,
    JobState,
    ProgressEvent,
    Strategy,
    TrainingPlan,
)
from graft.errors import FailedPrecondition
from graft.training.checkpoint import (
    Checkpoint,
    CheckpointError,
    RngState,
    load_checkpoint,
    save_checkpoint,
)
from graft.training.engine import (
    Schedule,
    begin_epoch,
    build_model,
    evaluate,
    make_loss,
    make_optimizer,
    make_scheduler,
    select_device,
    train_epoch,
)
from graft.training.errors import TrainingCancelled, TrainingPreempted
from graft.training.features import feature_key, load_or_compute_features
from graft.training.strategies import trained_stage_count

__all__ = [
    "Progress",
    "TrainResult",
    "TrainingCancelled",
    "TrainingObserver",
    "evaluate",
    "select_device",
    "train",
    "train_one_epoch",
]

Emit = Callable[[ProgressEvent], None]


class TrainingObserver(Protocol):
    """Hooks for measurements (the worker's Prometheus metrics, WorkerMetrics)."""

    def on_epoch_start(self) -> None: ...

    def on_step(self, images: int) -> None: ...

    def on_epoch(self, seconds: float) -> None: ...

    def on_checkpoint(self, seconds: float) -> None: ...


class _NoObserver:
    def on_epoch_start(self) -> None:
        pass

    def on_step(self, images: int) -> None:
        pass

    def on_epoch(self, seconds: float) -> None:
        pass

    def on_checkpoint(self, seconds: float) -> None:
        pass


@dataclass
class TrainResult:
    model: GraftModel  # best weights loaded, eval mode, on CPU, contiguous memory format
    metrics: EvaluationMetrics  # validation metrics of the best epoch
    epochs_run: int  # completed epochs, including those before a resume
    best_epoch: int  # 1-based
    resumed_from_epoch: int  # completed epochs found in the checkpoint (0: fresh start)
    train_seconds: float  # wall time of all attempts together


class Progress:
    """Turns steps into STEP events, at most one per `interval` seconds plus the last step
    of every epoch, each carrying the mean loss since the previous event."""

    def __init__(self, job_id: str, emit: Emit, *, total_epochs: int, interval: float) -> None:
        self.job_id, self.emit, self.interval = job_id, emit, interval
        self.total_epochs = total_epochs
        self.steps_per_epoch = 0
        self.start(0, 0)

    def start(self, steps_per_epoch: int, first_epoch: int) -> None:
        """Begin counting: `first_epoch` completed epochs (0-based index of the next one)."""
        self.steps_per_epoch = steps_per_epoch
        self.t0 = self.last = time.monotonic()
        self.steps_left_at_start = (self.total_epochs - first_epoch) * steps_per_epoch
        self.steps_done = 0
        self.loss_sum: torch.Tensor | None = None
        self.loss_count = 0
        self.images = 0

    def event(self, kind: EventKind, **fields: object) -> None:
        self.emit(
            ProgressEvent(
                kind=kind,
                state=JobState.RUNNING,
                job_id=self.job_id,
                time=time.time(),
                total_epochs=self.total_epochs,
                steps_per_epoch=self.steps_per_epoch,
                **fields,  # type: ignore[arg-type]
            )
        )

    def message(self, text: str, *, epoch: int = 0) -> None:
        self.event(EventKind.MESSAGE, message=text, epoch=epoch)

    def step(
        self, epoch: int, step: int, loss: torch.Tensor, images: int, learning_rate: float
    ) -> None:
        """Record step `step` (1-based) of epoch `epoch` (1-based)."""
        # Summing on the device keeps the loop free of GPU syncs; `.item()` below is the one
        # sync, once per event.
        self.loss_sum = loss if self.loss_sum is None else self.loss_sum + loss
        self.loss_count += 1
        self.images += images
        self.steps_done += 1
        now = time.monotonic()
        if now - self.last < self.interval and step != self.steps_per_epoch:
            return
        assert self.loss_sum is not None
        mean_loss = self.loss_sum.item() / self.loss_count
        elapsed = now - self.last
        per_step = (now - self.t0) / self.steps_done
        self.event(
            EventKind.STEP,
            epoch=epoch,
            step=step,
            loss=mean_loss,
            learning_rate=learning_rate,
            images_per_second=self.images / elapsed if elapsed > 0 else 0.0,
            eta_seconds=per_step * (self.steps_left_at_start - self.steps_done),
        )
        self.last, self.loss_sum, self.loss_count, self.images = now, None, 0, 0


def train_one_epoch(
    model: nn.Module,
    loader: Iterable[tuple[torch.Tensor, torch.Tensor]],
    *,
    optimizer: torch.optim.Optimizer,
    scheduler: LambdaLR,
    loss_fn: nn.Module,
    device: torch.device,
    epoch: int,
    progress: Progress,
    should_stop: Callable[[], bool],
    observer: TrainingObserver | None = None,
) -> float:
    """One pass over `loader` (engine.train_epoch) with STEP events and observer calls;
    returns the mean training loss. The caller has called engine.begin_epoch."""

    def on_step(step: int, loss: torch.Tensor, images: int, lr: float) -> None:
        progress.step(epoch, step, loss, images, lr)
        if observer is not None:
            observer.on_step(images)

    return train_epoch(
        model,
        loader,
        optimizer=optimizer,
        scheduler=scheduler,
        loss_fn=loss_fn,
        device=device,
        should_stop=should_stop,
        epoch=epoch,
        on_step=on_step,
    )


def _epoch_generator(seed: int, epoch: int) -> torch.Generator:
    # Shuffling order depends on (seed, epoch) only, so a resumed epoch sees the same order
    # as an uninterrupted run without storing the generator.
    g = torch.Generator()
    g.manual_seed((seed * 1_000_003 + epoch) % 2**63)
    return g


def feature_statistics(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-feature mean and standard deviation of training features. The deviation is
    floored at a tenth of the median feature's: a channel (almost) constant on the training
    images — a ReLU that never fired there — would otherwise be scaled up by 1e6 and turn a
    small value on a new image into a huge logit."""
    std = x.std(0, unbiased=False)
    floor = max(1e-6, 0.1 * float(std.median())) if std.numel() else 1e-6
    return x.mean(0), std.clamp_min(floor)


@torch.no_grad()
def fold_standardization(head: nn.Linear, mean: torch.Tensor, std: torch.Tensor) -> None:
    """Make `head` take raw features: W((x - m) / s) + b = (W / s) x + (b - W (m / s))."""
    mean = mean.to(head.weight.device, head.weight.dtype)
    std = std.to(head.weight.device, head.weight.dtype)
    assert head.bias is not None
    head.bias.sub_(head.weight @ (mean / std))
    head.weight.div_(std)


def _cpu_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}


def train(
    *,
    job_id: str,
    plan: TrainingPlan,
    classes: list[str],
    train_samples: Sequence[Sample],
    val_samples: Sequence[Sample],
    dataset_fingerprint: str,
    weights_dir: Path | None,
    checkpoint_dir: Path,
    device: torch.device,
    emit: Emit,
    should_stop: Callable[[], bool],
    pretrained: bool = True,
    step_event_interval: float = 1.0,
    update_bn_statistics: bool | None = None,
    observer: TrainingObserver | None = None,
    stop_at_checkpoint: Callable[[], bool] = lambda: False,
) -> TrainResult:
    """Train `plan` (resolved: see plan.resolve_plan) on the samples and return the best
    epoch's model. Resumes from `checkpoint_dir` when it holds a checkpoint of this same
    job; raises TrainingCancelled when `should_stop()` turns True (checked before each step).

    `pretrained=False` builds the backbone with random weights (tests). STEP events come at
    most every `step_event_interval` seconds. `update_bn_statistics` lets trained stages'
    BatchNorm layers re-estimate their running statistics (default: only without pretrained
    weights; see strategies.set_train_mode).

    `observer` gets step, epoch and checkpoint timings. When `stop_at_checkpoint()` is True
    after an epoch's checkpoint is written, TrainingPreempted is raised (worker shutdown).
    """
    observer = observer or _NoObserver()
    started = time.monotonic()
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
    fe = plan.strategy == Strategy.FEATURE_EXTRACTION
    spec = get_spec(plan.backbone)
    # Pretrained BatchNorm statistics are kept (see strategies.set_train_mode); a random
    # init has none worth keeping.
    if update_bn_statistics is None:
        update_bn_statistics = not pretrained

    # --- model: pretrained body + fresh head, initialised from the seed -------------------
    model = build_model(
        plan,
        len(classes),
        device=device,
        seed=plan.seed,
        weights_dir=weights_dir,
        pretrained=pretrained,
    )
    trained_module = model.head if fe else model  # what train_one_epoch and evaluate run
    checkpoint_dir.mkdir(parents=True, exist_ok=True)
    progress = Progress(job_id, emit, total_epochs=plan.epochs, interval=step_event_interval)

    # --- data -------------------------------------------------------------------------
    # num_workers=0: datasets here are small and decoded images are cached in memory after
    # the first epoch (ImageDataset), and on a 2-core host worker processes only compete
    # with the training threads. It also keeps augmentation on the main process's RNG,
    # which the checkpoint saves, so a resumed run draws the same augmentations.
    pin = device.type == "cuda"
    if fe:
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
        feature_mean, feature_std = feature_statistics(features.train_x)
        train_data: Dataset = TensorDataset(
            (features.train_x - feature_mean) / feature_std, features.train_y
        )
        val_data: Dataset = TensorDataset(
            (features.val_x - feature_mean) / feature_std, features.val_y
        )
        drop_last = False  # the head alone has no BatchNorm
    else:
        train_data = ImageDataset(
            train_samples, train_transform(spec, plan.image_size, plan.augmentation)
        )
        val_data = ImageDataset(val_samples, eval_transform(spec, plan.image_size))
        # BatchNorm cannot normalise one image whose final feature map is 1x1; drop a last
        # batch of exactly one image (a different one each epoch, as the order is shuffled).
        drop_last = (
            len(train_samples) > plan.batch_size and len(train_samples) % plan.batch_size == 1
        )
    n_train = len(train_samples)
    steps_per_epoch = (
        n_train // plan.batch_size if drop_last else math.ceil(n_train / plan.batch_size)
    )
    val_loader = DataLoader(val_data, batch_size=plan.batch_size, shuffle=False, pin_memory=pin)

    def train_loader(epoch: int) -> DataLoader:
        return DataLoader(
            train_data,
            batch_size=plan.batch_size,
            shuffle=True,
            generator=_epoch_generator(plan.seed, epoch),
            drop_last=drop_last,
            num_workers=0,
            pin_memory=pin,
        )

    # --- loss, optimizer, schedule ------------------------------------------------------
    loss_fn = make_loss(plan, [s.label for s in train_samples], len(classes), device)
    optimizer = make_optimizer(model, plan)
    scheduler = make_scheduler(optimizer, Schedule.for_plan(plan, steps_per_epoch))

    # --- resume ---------------------------------------------------------------------
    start_epoch, best_epoch = 0, 0
    best_acc, best_loss = -1.0, math.inf
    best_state: dict[str, torch.Tensor] | None = None
    best_metrics: EvaluationMetrics | None = None
    history: list[dict[str, object]] = []
    previous_seconds = 0.0
    ckpt = _usable_checkpoint(
        checkpoint_dir, plan, dataset_fingerprint, classes, pretrained, update_bn_statistics
    )
    if isinstance(ckpt, str):
        if ckpt:
            progress.message(ckpt)
    else:
        model.load_state_dict(ckpt.model_state)
        if ckpt.optimizer_state is not None:
            optimizer.load_state_dict(ckpt.optimizer_state)
        if ckpt.scheduler_state is not None:
            scheduler.load_state_dict(ckpt.scheduler_state)
        if ckpt.rng is not None:
            ckpt.rng.restore()
        start_epoch, best_epoch = ckpt.epoch, ckpt.best_epoch
        best_acc, best_loss = ckpt.best_metric, ckpt.best_loss
        best_state = {k: v.clone() for k, v in ckpt.best_weights().items()}
        best_metrics, history = ckpt.best_metrics, ckpt.history
        previous_seconds = ckpt.train_seconds
        progress.message(
            f"resumed from checkpoint at epoch {ckpt.epoch} "
            f"(best so far: epoch {best_epoch}, accuracy {best_acc:.4f})",
            epoch=ckpt.epoch,
        )
    resumed_from = start_epoch

    if not fe and plan.base_learning_rate > plan.head_learning_rate:
        progress.message(
            "base learning rate exceeds the head's: pretrained layers may lose what they "
            "learned (discriminative rates usually keep the base ~10x lower)"
        )
    if start_epoch == 0:
        progress.message(
            _describe(model, plan, n_train, len(val_samples), device, update_bn_statistics)
        )

    progress.start(steps_per_epoch, start_epoch)

    # --- epochs -------------------------------------------------------------------
    epochs_done = start_epoch
    for epoch in range(start_epoch, plan.epochs):
        patience = plan.early_stopping_patience
        if patience and epochs_done - best_epoch >= patience:
            progress.message(
                f"early stopping at epoch {epochs_done}: no better validation accuracy in "
                f"{patience} epochs (best: epoch {best_epoch}, accuracy {best_acc:.4f})",
                epoch=epochs_done,
            )
            break
        epoch_start = time.monotonic()
        observer.on_epoch_start()
        if not fe and epoch == plan.head_warmup_epochs and epoch > 0:
            progress.message("head warm-up done: the base starts training", epoch=epoch + 1)
        begin_epoch(model, plan, epoch, update_bn_statistics=update_bn_statistics)

        train_loss = train_one_epoch(
            trained_module,
            train_loader(epoch),
            optimizer=optimizer,
            scheduler=scheduler,
            loss_fn=loss_fn,
            device=device,
            epoch=epoch + 1,
            progress=progress,
            should_stop=should_stop,
            observer=observer,
        )
        metrics = evaluate(
            trained_module, val_loader, labels=classes, device=device, should_stop=should_stop
        )
        epochs_done = epoch + 1
        progress.event(
            EventKind.EVALUATION,
            epoch=epochs_done,
            step=steps_per_epoch,
            loss=metrics.loss,
            learning_rate=optimizer.param_groups[0]["lr"],
            metrics=metrics,
        )

        # Best epoch by validation accuracy; ties go to the lower validation loss.
        if metrics.accuracy > best_acc or (
            metrics.accuracy == best_acc and metrics.loss < best_loss
        ):
            best_acc, best_loss, best_epoch, best_metrics = (
                metrics.accuracy,
                metrics.loss,
                epochs_done,
                metrics,
            )
            best_state = _cpu_state(model)
        history.append(
            {
                "epoch": epochs_done,
                "train_loss": train_loss,
                "val_loss": metrics.loss,
                "accuracy": metrics.accuracy,
                "macro_f1": metrics.macro_f1,
                "seconds": time.monotonic() - epoch_start,
            }
        )
        observer.on_epoch(time.monotonic() - epoch_start)
        t_checkpoint = time.monotonic()
        save_checkpoint(
            checkpoint_dir,
            Checkpoint(
                job_id=job_id,
                backbone=plan.backbone,
                classes=list(classes),
                dataset_fingerprint=dataset_fingerprint,
                plan=plan,
                epoch=epochs_done,
                model_state=model.state_dict(),
                optimizer_state=optimizer.state_dict(),
                scheduler_state=scheduler.state_dict(),
                rng=RngState.capture(),
                best_metric=best_acc,
                best_loss=best_loss,
                best_epoch=best_epoch,
                best_metrics=best_metrics,
                best_state=None if best_epoch == epochs_done else best_state,
                history=history,
                train_seconds=previous_seconds + time.monotonic() - started,
                extra={
                    "pretrained": pretrained,
                    "update_bn_statistics": update_bn_statistics,
                    "architecture": spec.architecture,
                },
            ),
        )
        observer.on_checkpoint(time.monotonic() - t_checkpoint)
        if stop_at_checkpoint() and epochs_done < plan.epochs:
            raise TrainingPreempted(f"stopped after the checkpoint of epoch {epochs_done}")

    # --- result: the best epoch's weights, ready to serve ------------------------------
    assert best_state is not None and best_metrics is not None
    model.load_state_dict(best_state)
    if fe:
        fold_standardization(model.head, feature_mean, feature_std)
    model.to("cpu").to(memory_format=torch.contiguous_format)  # safetensors wants contiguous
    model.eval()
    return TrainResult(
        model=model,
        metrics=best_metrics,
        epochs_run=epochs_done,
        best_epoch=best_epoch,
        resumed_from_epoch=resumed_from,
        train_seconds=previous_seconds + time.monotonic() - started,
    )


def _usable_checkpoint(
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


def _describe(
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
