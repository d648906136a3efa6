"""The training loop: `train_one_epoch`, and `train`, which runs a job.

Read it top to bottom: `train` is a short driver over named phases. `_set_up` builds the
model and the data, `_start` restores a checkpoint when one fits, then for each epoch
`_run_epoch` trains and evaluates, `_record` keeps the best weights and `_checkpoint` saves
the `TrainState` (state.py); `_finish` returns the best epoch's model. Full and partial
fine-tuning train the whole model on images; feature extraction trains only the head, on
body features computed once (features.py). Both go through the same engine (engine.py:
model, optimiser, schedule, loss, step, evaluate), which the advisor's pilot uses too. On
several devices every rank runs `train` with a `DistributedRank` (distributed.py): it wraps
the model in DDP and shards batches and validation; rank 0 alone writes checkpoints.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import torch
from torch import nn
from torch.optim.lr_scheduler import LambdaLR

from graft.backbones import get_spec
from graft.data import Sample
from graft.domain import EvaluationMetrics, EventKind, TrainingPlan
from graft.training.checkpoint import save_checkpoint
from graft.training.distributed import DistributedRank, GlobalMeanLoss
from graft.training.engine import (
    Schedule,
    Tally,
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
from graft.training.features import feature_statistics, fold_standardization
from graft.training.progress import Emit, NoObserver, Progress, TrainingObserver
from graft.training.setup import build_data, check_inputs, describe, usable_checkpoint
from graft.training.state import Best, Run, TrainResult, TrainState, checkpoint_of

__all__ = [
    "Progress",
    "TrainResult",
    "TrainingCancelled",
    "TrainingObserver",
    "evaluate",
    "feature_statistics",
    "fold_standardization",
    "select_device",
    "train",
    "train_one_epoch",
]


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
    ddp: DistributedRank | None = None,
    tally: Tally | None = None,
) -> float:
    """One pass over `loader` (engine.train_epoch) with STEP events and observer calls;
    returns the mean training loss, and counts the top-1 hits in `tally`. The caller has
    called engine.begin_epoch. With `ddp`, `loader` is this rank's share and events count
    the images of all ranks."""

    def on_step(step: int, loss: torch.Tensor, images: int, lr: float) -> None:
        if ddp is not None:
            images = ddp.global_batch_size(step)
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
        tally=tally,
    )


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
    ddp: DistributedRank | None = None,
    cache_frozen_stages: bool = True,
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

    `cache_frozen_stages`: partial fine-tuning without augmentation runs the frozen stages
    once (prefix.py); False runs them every epoch.

    `ddp`: this process is one rank of several training the job (distributed.py; launch.py
    starts them). Rank 0's `should_stop` and `stop_at_checkpoint` decide for all, and only
    rank 0 writes checkpoints; the caller gives the other ranks events and observers that
    go nowhere.
    """
    started = time.monotonic()
    check_inputs(plan, classes, train_samples, val_samples)
    if ddp is not None:  # asked on every rank at the same points; rank 0 answers
        should_stop, stop_at_checkpoint = ddp.agreed(should_stop), ddp.agreed(stop_at_checkpoint)
    run = _set_up(
        job_id=job_id,
        plan=plan,
        classes=classes,
        train_samples=train_samples,
        val_samples=val_samples,
        dataset_fingerprint=dataset_fingerprint,
        weights_dir=weights_dir,
        checkpoint_dir=checkpoint_dir,
        device=device,
        progress=Progress(job_id, emit, total_epochs=plan.epochs, interval=step_event_interval),
        should_stop=should_stop,
        pretrained=pretrained,
        update_bn_statistics=update_bn_statistics,
        observer=observer or NoObserver(),
        stop_at_checkpoint=stop_at_checkpoint,
        ddp=ddp,
        cache_frozen_stages=cache_frozen_stages,
    )
    state = _start(run, started)
    while state.epoch < plan.epochs:
        if _early_stop(run, state):
            break
        epoch_start = time.monotonic()
        run.observer.on_epoch_start()
        train_loss, metrics = _run_epoch(run, state)
        _record(run, state, train_loss, metrics, epoch_start)
        if ddp is None or ddp.is_main:
            _checkpoint(run, state)
        if run.stop_at_checkpoint() and state.epoch < plan.epochs:
            raise TrainingPreempted(f"stopped after the checkpoint of epoch {state.epoch}")
    return _finish(run, state)


def _set_up(
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
    progress: Progress,
    should_stop: Callable[[], bool],
    pretrained: bool,
    update_bn_statistics: bool | None,
    observer: TrainingObserver,
    stop_at_checkpoint: Callable[[], bool],
    ddp: DistributedRank | None,
    cache_frozen_stages: bool,
) -> Run:
    """The model (pretrained body + fresh head, initialised from the seed), the data and
    the loss: everything but the optimiser, which belongs to the TrainState."""
    spec = get_spec(plan.backbone)
    # Pretrained BatchNorm statistics are kept (see strategies.set_train_mode); a random
    # init has none worth keeping.
    if update_bn_statistics is None:
        update_bn_statistics = not pretrained
    model = build_model(
        plan,
        len(classes),
        device=device,
        seed=plan.seed,
        weights_dir=weights_dir,
        pretrained=pretrained,
    )
    checkpoint_dir.mkdir(parents=True, exist_ok=True)
    data = build_data(
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
        distributed=ddp is not None,
        cache_frozen_stages=cache_frozen_stages,
    )
    loss_fn = make_loss(plan, [s.label for s in train_samples], len(classes), device)
    if ddp is not None:  # the steps of a sharded epoch, BatchNorm
        ddp.prepare(model, data, update_bn=update_bn_statistics)
    return Run(
        job_id=job_id,
        plan=plan,
        classes=classes,
        dataset_fingerprint=dataset_fingerprint,
        checkpoint_dir=checkpoint_dir,
        device=device,
        pretrained=pretrained,
        update_bn_statistics=update_bn_statistics,
        spec=spec,
        model=model,
        data=data,
        loss_fn=loss_fn if ddp is None else GlobalMeanLoss(loss_fn, ddp.world_size),
        progress=progress,
        observer=observer,
        should_stop=should_stop,
        stop_at_checkpoint=stop_at_checkpoint,
        n_train=len(train_samples),
        n_val=len(val_samples),
        ddp=ddp,
    )


def _start(run: Run, started: float) -> TrainState:
    """A fresh TrainState, or the checkpoint's when it is of this same job; then the opening
    messages, and the progress counter started at the first epoch to run."""
    optimizer = make_optimizer(run.model, run.plan)
    scheduler = make_scheduler(optimizer, Schedule.for_plan(run.plan, run.data.steps_per_epoch))
    state = TrainState(optimizer, scheduler, started=started)
    ckpt = usable_checkpoint(
        run.checkpoint_dir,
        run.plan,
        run.dataset_fingerprint,
        run.classes,
        run.pretrained,
        run.update_bn_statistics,
    )
    if isinstance(ckpt, str):
        if ckpt:
            run.progress.message(ckpt)
    else:
        run.load_kept(ckpt.model_state)
        if ckpt.optimizer_state is not None:
            optimizer.load_state_dict(ckpt.optimizer_state)
        if ckpt.scheduler_state is not None:
            scheduler.load_state_dict(ckpt.scheduler_state)
        if ckpt.rng is not None:
            ckpt.rng.restore()
        state.epoch = state.resumed_from = ckpt.epoch
        weights = {k: v.clone() for k, v in ckpt.best_weights().items()}
        state.best = Best(
            ckpt.best_epoch, ckpt.best_metric, ckpt.best_loss, ckpt.best_metrics, weights
        )
        state.history = ckpt.history
        state.previous_seconds = ckpt.train_seconds
        run.progress.message(
            f"resumed from checkpoint at epoch {ckpt.epoch} "
            f"(best so far: epoch {ckpt.best_epoch}, accuracy {ckpt.best_metric:.4f})",
            epoch=ckpt.epoch,
        )
    plan = run.plan
    if not run.feature_extraction and plan.base_learning_rate > plan.head_learning_rate:
        run.progress.message(
            "base learning rate exceeds the head's: pretrained layers may lose what they "
            "learned (discriminative rates usually keep the base ~10x lower)"
        )
    if state.epoch == 0:
        run.progress.message(
            describe(run.model, plan, run.n_train, run.n_val, run.device, run.update_bn_statistics)
        )
    run.progress.start(run.data.steps_per_epoch, state.epoch)
    return state


def _early_stop(run: Run, state: TrainState) -> bool:
    """Whether `early_stopping_patience` epochs have passed without a better one."""
    patience, best = run.plan.early_stopping_patience, state.best
    if not patience or state.epoch - best.epoch < patience:
        return False
    run.progress.message(
        f"early stopping at epoch {state.epoch}: no better validation accuracy in "
        f"{patience} epochs (best: epoch {best.epoch}, accuracy {best.accuracy:.4f})",
        epoch=state.epoch,
    )
    return True


def _run_epoch(run: Run, state: TrainState) -> tuple[float, EvaluationMetrics]:
    """Train epoch `state.epoch` (0-based), evaluate, count it done and send the EVALUATION
    event. Returns the mean training loss and the validation metrics."""
    plan, epoch = run.plan, state.epoch
    if not run.feature_extraction and epoch == plan.head_warmup_epochs and epoch > 0:
        run.progress.message("head warm-up done: the base starts training", epoch=epoch + 1)
    # Which parameters train and each module's mode: frozen stages (and every stage during
    # the head warm-up) stay in eval mode, so their BatchNorm statistics are not touched;
    # trained stages update theirs only with update_bn_statistics (strategies.set_train_mode).
    begin_epoch(run.model, plan, epoch, update_bn_statistics=run.update_bn_statistics)
    module = run.trained_module
    if run.ddp is None:
        batches = run.data.train_loader(epoch)
    else:  # the module wrapped in DDP; this rank's share of each batch
        module = run.ddp.begin_epoch(module, plan.seed, epoch)
        batches = run.ddp.train_batches(run.data, epoch)
    tally = Tally(run.device)
    train_loss = train_one_epoch(
        module,
        batches,
        optimizer=state.optimizer,
        scheduler=state.scheduler,
        loss_fn=run.loss_fn,
        device=run.device,
        epoch=epoch + 1,
        progress=run.progress,
        should_stop=run.should_stop,
        observer=run.observer,
        ddp=run.ddp,
        tally=tally,
    )
    # With several ranks each predicts a shard of the validation set; all get the metrics.
    metrics = (evaluate if run.ddp is None else run.ddp.evaluate)(
        run.trained_module,
        run.data.val_loader,
        labels=run.classes,
        device=run.device,
        should_stop=run.should_stop,
    )
    state.epoch = epoch + 1
    run.progress.event(
        EventKind.EVALUATION,
        epoch=state.epoch,
        step=run.data.steps_per_epoch,
        loss=metrics.loss,
        learning_rate=state.optimizer.param_groups[0]["lr"],
        metrics=metrics,
        train_accuracy=tally.accuracy() if run.ddp is None else run.ddp.accuracy(tally),
    )
    return train_loss, metrics


def _record(
    run: Run, state: TrainState, train_loss: float, metrics: EvaluationMetrics, epoch_start: float
) -> None:
    """Keep the epoch as the best when it is (a CPU copy of its weights), and in history."""
    if state.best.beaten_by(metrics):
        weights = run.kept_state()
        state.best = Best(state.epoch, metrics.accuracy, metrics.loss, metrics, weights)
    state.history.append(
        {
            "epoch": state.epoch,
            "train_loss": train_loss,
            "val_loss": metrics.loss,
            "accuracy": metrics.accuracy,
            "macro_f1": metrics.macro_f1,
            "seconds": time.monotonic() - epoch_start,
        }
    )
    run.observer.on_epoch(time.monotonic() - epoch_start)


def _checkpoint(run: Run, state: TrainState) -> None:
    """Save everything a resume needs (state.checkpoint_of)."""
    t0 = time.monotonic()
    save_checkpoint(run.checkpoint_dir, checkpoint_of(run, state))
    run.observer.on_checkpoint(time.monotonic() - t0)


def _finish(run: Run, state: TrainState) -> TrainResult:
    """The best epoch's weights, ready to serve."""
    best, model = state.best, run.model
    assert best.weights is not None and best.metrics is not None
    run.load_kept(best.weights)
    logits = None
    if run.feature_extraction:  # the served head reads raw features
        logits = run.data.finish_head(model.head, len(run.classes), run.device)
    model.to("cpu").to(memory_format=torch.contiguous_format)  # safetensors wants contiguous
    model.eval()
    return TrainResult(
        model=model,
        metrics=best.metrics,
        epochs_run=state.epoch,
        best_epoch=best.epoch,
        resumed_from_epoch=state.resumed_from,
        train_seconds=state.train_seconds(),
        validation_logits=logits,
    )
