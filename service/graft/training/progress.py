"""What a training run tells the outside world: progress events and observer hooks.

`Progress` turns steps into STEP events (rate-limited, each with the mean loss since the
previous one) and sends MESSAGE and EVALUATION events; a `TrainingObserver` gets step,
epoch and checkpoint timings (the worker's Prometheus metrics).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Protocol

import torch

from graft.domain import EventKind, JobState, ProgressEvent

Emit = Callable[[ProgressEvent], None]


class TrainingObserver(Protocol):
    """Hooks for measurements (the worker's Prometheus metrics, WorkerMetrics)."""

    def on_epoch_start(self) -> None: ...

    def on_step(self, images: int) -> None: ...

    def on_epoch(self, seconds: float) -> None: ...

    def on_checkpoint(self, seconds: float) -> None: ...


class NoObserver:
    def on_epoch_start(self) -> None:
        pass

    def on_step(self, images: int) -> None:
        pass

    def on_epoch(self, seconds: float) -> None:
        pass

    def on_checkpoint(self, seconds: float) -> None:
        pass


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
