"""The training engine: the one implementation of what a training run does.

The trainer (loop.train), the advisor's pilot fine-tune and its timed training steps
(graft.advisor.pilot) all build, train and evaluate a model through these functions, so
what the advisor measures on its sample is what the worker then runs: the same model,
freezing, BatchNorm handling, AdamW groups, schedule, loss and step. They differ only in
where their batches come from (the trainer: a DataLoader over the dataset; the pilot: the
decoded sample in memory) and in how long they run.

| piece | function |
|---|---|
| model | `build_model`: seeded `create_model`, freezing (strategies), device, channels_last |
| optimiser | `make_optimizer`: AdamW over `strategies.param_groups` |
| schedule | `Schedule` (`for_plan`), `make_scheduler`, `lr_factor` |
| loss | `make_loss`: cross-entropy with label smoothing and class weights |
| an epoch | `begin_epoch` (what trains, head warm-up, modes), `train_epoch` over `train_step` |
| training accuracy | `Tally`: top-1 of the batches as trained, counted on the device |
| evaluation | `evaluate` (over `predict`: the logits and targets) |
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.optim.lr_scheduler import LambdaLR

from graft.backbones import create_model
from graft.backbones.spec import GraftModel
from graft.domain import EvaluationMetrics, TrainingPlan
from graft.training.errors import TrainingCancelled
from graft.training.evaluation import evaluate_predictions
from graft.training.strategies import param_groups, set_train_mode, set_trainable

Batches = Iterable[tuple[torch.Tensor, torch.Tensor]]
# Called after each step with (1-based step, detached loss, images, the head's rate).
OnStep = Callable[[int, torch.Tensor, int, float], None]


def select_device(preference: str = "") -> torch.device:
    """`preference` ("cpu", "cuda", "cuda:1"), or CUDA when available, else the CPU."""
    if preference:
        return torch.device(preference)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def autocast(device: torch.device) -> torch.autocast:
    # bf16 autocast on CUDA only: it halves activation memory and uses tensor cores, and
    # bf16 has fp32's range so no GradScaler is needed. On CPU, bf16 is slower than fp32
    # on most hosts, so CPU runs in fp32.
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")


def to_device(x: torch.Tensor, device: torch.device) -> torch.Tensor:
    # non_blocking with pinned host memory lets the copy overlap the previous step on CUDA.
    # Image batches go channels_last (NHWC): convolutions are about 1.8x faster that way on
    # this CPU and use tensor cores on GPUs. Cached features (N x C) stay as they are.
    if x.ndim == 4:
        return x.to(device, non_blocking=True, memory_format=torch.channels_last)
    return x.to(device, non_blocking=True)


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (timing); a no-op on the CPU."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def build_model(
    plan: TrainingPlan,
    num_classes: int,
    *,
    device: torch.device,
    seed: int | None,
    weights_dir: Path | None = None,
    pretrained: bool = True,
) -> GraftModel:
    """The model `plan` (resolved) trains: the pretrained body with `plan`'s feature cut and
    a fresh head, frozen as the strategy says (strategies.set_trainable), on `device` in
    channels_last. With `seed`, torch's global RNG is seeded first, so the new head's
    initialisation (and every draw after it, augmentation included) follows from it."""
    if seed is not None:
        torch.manual_seed(seed)
    model = create_model(
        plan.backbone,
        num_classes,
        pretrained=pretrained,
        weights_dir=weights_dir,
        feature_stages=plan.feature_stages,
        feature_grid=plan.feature_grid,
    )
    set_trainable(model, plan)
    model.to(device).to(memory_format=torch.channels_last)
    return model


def make_optimizer(model: GraftModel, plan: TrainingPlan) -> torch.optim.AdamW:
    """AdamW over the strategy's parameter groups (head first, at the head's rate; the base
    at the base's; no weight decay on biases and normalisation parameters)."""
    return torch.optim.AdamW(param_groups(model, plan), lr=plan.head_learning_rate)


def lr_factor(start: int, warmup: int, total: int) -> Callable[[int], float]:
    """Learning-rate multiplier at step `s`: 0 before `start` (a group still frozen by the
    head warm-up), linear warm-up over `warmup` steps, then cosine decay to the last step."""

    def f(s: int) -> float:
        s -= start
        if s < 0:
            return 0.0
        if s < warmup:
            return (s + 1) / warmup
        decay_steps = max(1, total - start - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, (s - warmup) / decay_steps)))

    return f


@dataclass(frozen=True)
class Schedule:
    """The per-step learning-rate schedule, in optimiser steps: linear warm-up over
    `warmup_steps`, then cosine decay to `total_steps`; the base groups' schedule starts at
    `base_start` (when the head warm-up ends), the head's at 0."""

    total_steps: int
    warmup_steps: int
    base_start: int = 0

    @classmethod
    def for_plan(cls, plan: TrainingPlan, steps_per_epoch: int) -> Schedule:
        """The schedule of a whole run of `plan`: its epochs, warm-up and head warm-up."""
        return cls(
            total_steps=plan.epochs * steps_per_epoch,
            warmup_steps=round(plan.warmup_epochs * steps_per_epoch),
            base_start=plan.head_warmup_epochs * steps_per_epoch,
        )


def make_scheduler(optimizer: torch.optim.Optimizer, schedule: Schedule) -> LambdaLR:
    """A LambdaLR stepped once per optimiser step, one multiplier per parameter group."""
    return LambdaLR(
        optimizer,
        [
            lr_factor(
                0 if g["name"].startswith("head") else schedule.base_start,
                schedule.warmup_steps,
                schedule.total_steps,
            )
            for g in optimizer.param_groups
        ],
    )


def class_weights(labels: Sequence[int], num_classes: int) -> torch.Tensor:
    """Inverse-frequency weights, scaled so that the mean weight over the training images is
    1 (the loss keeps its usual size): w_c = N / (C_present * n_c). Absent classes get 1."""
    counts = torch.bincount(torch.as_tensor(list(labels), dtype=torch.long), minlength=num_classes)
    present = int((counts > 0).sum())
    w = torch.ones(num_classes)
    mask = counts > 0
    w[mask] = len(labels) / (present * counts[mask].double()).float()
    return w


def make_loss(
    plan: TrainingPlan, train_labels: Sequence[int], num_classes: int, device: torch.device
) -> nn.CrossEntropyLoss:
    """Cross-entropy with the plan's label smoothing and, with `class_weighting`, the
    inverse-frequency weights of `train_labels`."""
    weight = class_weights(train_labels, num_classes).to(device) if plan.class_weighting else None
    return nn.CrossEntropyLoss(weight=weight, label_smoothing=plan.label_smoothing)


class Tally:
    """Top-1 hits on the training batches as they were trained (augmented, dropout on),
    counted on the device so that the steps stay free of GPU syncs."""

    def __init__(self, device: torch.device) -> None:
        self.correct = torch.zeros((), dtype=torch.long, device=device)
        self.images = 0

    def add(self, logits: torch.Tensor, targets: torch.Tensor) -> None:
        self.correct += (logits.detach().argmax(1) == targets).sum()
        self.images += len(targets)

    def accuracy(self) -> float:
        """The epoch's training accuracy (one sync); 0 before any image."""
        return self.correct.item() / self.images if self.images else 0.0


def begin_epoch(
    model: GraftModel, plan: TrainingPlan, epoch: int, *, update_bn_statistics: bool = False
) -> bool:
    """Set what trains in epoch `epoch` (0-based) and the modules' modes: during the plan's
    head warm-up only the head trains and every stage is in eval mode; frozen stages stay
    in eval mode always (strategies.set_train_mode). Returns whether it is a head warm-up
    epoch."""
    head_warmup = epoch < plan.head_warmup_epochs
    set_trainable(model, plan, head_warmup=head_warmup)
    set_train_mode(model, plan, head_warmup=head_warmup, update_bn_statistics=update_bn_statistics)
    return head_warmup


def train_step(
    model: nn.Module,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    *,
    optimizer: torch.optim.Optimizer,
    scheduler: LambdaLR,
    loss_fn: nn.Module,
    device: torch.device,
    tally: Tally | None = None,
) -> tuple[torch.Tensor, float]:
    """One optimisation step; returns the (detached, on-device) loss and the head's rate
    for this step, and counts its top-1 hits in `tally`. No GPU sync here."""
    inputs = to_device(inputs, device)
    targets = targets.to(device, non_blocking=True)
    with autocast(device):
        logits = model(inputs)
    if tally is not None:
        tally.add(logits, targets)
    loss = loss_fn(logits.float(), targets)  # the loss in fp32 even under autocast
    optimizer.zero_grad(set_to_none=True)  # None, not 0: frozen params stay gradient-free
    loss.backward()
    lr: float = optimizer.param_groups[0]["lr"]  # the head's rate for this step
    optimizer.step()
    scheduler.step()  # the schedule is per step: warm-up, then cosine decay
    return loss.detach(), lr


def train_epoch(
    model: nn.Module,
    batches: Batches,
    *,
    optimizer: torch.optim.Optimizer,
    scheduler: LambdaLR,
    loss_fn: nn.Module,
    device: torch.device,
    should_stop: Callable[[], bool],
    epoch: int,
    on_step: OnStep | None = None,
    tally: Tally | None = None,
) -> float:
    """One pass over `batches`; returns the mean training loss (and counts the top-1 hits
    in `tally`). The caller has called `begin_epoch`. `should_stop()` is asked before every
    step; True raises TrainingCancelled before the step runs."""
    total = torch.zeros((), device=device)
    steps = 0
    for step, (inputs, targets) in enumerate(batches, start=1):
        if should_stop():  # "CancelJob stops a running job within one step"
            raise TrainingCancelled(f"cancelled at epoch {epoch}, step {step}")
        loss, lr = train_step(
            model,
            inputs,
            targets,
            optimizer=optimizer,
            scheduler=scheduler,
            loss_fn=loss_fn,
            device=device,
            tally=tally,
        )
        total += loss
        steps += 1
        if on_step is not None:
            on_step(step, loss, len(targets), lr)
    return total.item() / max(1, steps)  # syncs once per epoch


@torch.inference_mode()
def predict(
    model: nn.Module,
    batches: Batches,
    *,
    num_classes: int,
    device: torch.device,
    should_stop: Callable[[], bool] = lambda: False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The fp32 logits (N x num_classes, on the CPU) of `model` (put in eval mode here) on
    `batches`, and their targets, in the batches' order."""
    model.eval()
    all_logits: list[torch.Tensor] = []
    all_targets: list[torch.Tensor] = []
    for inputs, targets in batches:
        if should_stop():
            raise TrainingCancelled("cancelled during evaluation")
        with autocast(device):
            logits = model(to_device(inputs, device))
        all_logits.append(logits.float().cpu())  # syncs per batch; evaluation is short
        all_targets.append(targets)
    if not all_logits:
        return torch.zeros(0, num_classes), torch.zeros(0)
    return torch.cat(all_logits), torch.cat(all_targets)


@torch.inference_mode()
def evaluate(
    model: nn.Module,
    batches: Batches,
    *,
    labels: Sequence[str],
    device: torch.device,
    should_stop: Callable[[], bool] = lambda: False,
) -> EvaluationMetrics:
    """Metrics of `model` (put in eval mode here) on `batches`."""
    logits, targets = predict(
        model, batches, num_classes=len(labels), device=device, should_stop=should_stop
    )
    return evaluate_predictions(logits, targets, labels)
