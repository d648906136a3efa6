"""The objects one training run carries: `Run`, fixed for the job once set up, and
`TrainState`, which the epochs advance (and a checkpoint saves), with its `Best` record."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn
from torch.optim.lr_scheduler import LambdaLR

from graft.backbones.pretrained import PretrainedSpec
from graft.backbones.spec import GraftModel
from graft.domain import EvaluationMetrics, Strategy, TrainingPlan
from graft.training.checkpoint import Checkpoint, RngState
from graft.training.distributed import DistributedRank
from graft.training.progress import Progress, TrainingObserver
from graft.training.setup import TrainingData


@dataclass
class Run:
    """What a run is given and what set-up built from it; nothing here changes per epoch."""

    job_id: str
    plan: TrainingPlan
    classes: list[str]
    dataset_fingerprint: str
    checkpoint_dir: Path
    device: torch.device
    pretrained: bool
    update_bn_statistics: bool
    spec: PretrainedSpec
    model: GraftModel
    data: TrainingData
    loss_fn: nn.Module
    progress: Progress
    observer: TrainingObserver
    should_stop: Callable[[], bool]
    stop_at_checkpoint: Callable[[], bool]
    n_train: int
    n_val: int
    ddp: DistributedRank | None = None  # this process is one rank of several (distributed.py)

    @property
    def feature_extraction(self) -> bool:
        return self.plan.strategy == Strategy.FEATURE_EXTRACTION

    @property
    def trained_module(self) -> nn.Module:
        """What train_one_epoch and evaluate run: the head alone on features, the trained
        stages and the head on the frozen stages' outputs (prefix.py), or the model."""
        if self.feature_extraction:
            return self.model.head
        return self.data.suffix if self.data.suffix is not None else self.model

    @property
    def head_only_weights(self) -> bool:
        """Feature extraction from pretrained weights: the body is the weights file's,
        frozen, and build_model rebuilds it exactly, so the best epoch and the checkpoints
        keep the head's weights alone (a whole Lite0 is 18 MB written every epoch; its head
        a few kB). With a random body (tests) they keep everything."""
        return self.feature_extraction and self.pretrained

    def kept_state(self) -> dict[str, torch.Tensor]:
        """A CPU copy of the weights the best epoch and a checkpoint keep (state-dict keys
        of the whole model: `head.*` alone under head_only_weights)."""
        if self.head_only_weights:
            return {f"head.{k}": v for k, v in cpu_state(self.model.head).items()}
        return cpu_state(self.model)

    def load_kept(self, state: dict[str, torch.Tensor]) -> None:
        """Load what kept_state kept (strictly: every key of what it covers)."""
        if self.head_only_weights:
            head = {k[len("head.") :]: v for k, v in state.items() if k.startswith("head.")}
            self.model.head.load_state_dict(head)
        else:
            self.model.load_state_dict(state)


@dataclass
class Best:
    """The best epoch so far: highest validation accuracy, ties to the lower loss."""

    epoch: int = 0  # 1-based; 0 before the first evaluation
    accuracy: float = -1.0
    loss: float = math.inf
    metrics: EvaluationMetrics | None = None
    weights: dict[str, torch.Tensor] | None = None  # a CPU copy: Run.kept_state()

    def beaten_by(self, metrics: EvaluationMetrics) -> bool:
        return metrics.accuracy > self.accuracy or (
            metrics.accuracy == self.accuracy and metrics.loss < self.loss
        )


@dataclass
class TrainState:
    """Where the run is: what a checkpoint saves and a resume restores."""

    optimizer: torch.optim.Optimizer
    scheduler: LambdaLR
    started: float  # time.monotonic() when this attempt began
    epoch: int = 0  # completed epochs, including those before a resume
    resumed_from: int = 0  # completed epochs found in the checkpoint (0: fresh start)
    best: Best = field(default_factory=Best)
    history: list[dict[str, object]] = field(default_factory=list)
    previous_seconds: float = 0.0  # training time of earlier attempts

    def train_seconds(self) -> float:
        return self.previous_seconds + time.monotonic() - self.started


@dataclass
class TrainResult:
    model: GraftModel  # best weights loaded, eval mode, on CPU, contiguous memory format
    metrics: EvaluationMetrics  # validation metrics of the best epoch
    epochs_run: int  # completed epochs, including those before a resume
    best_epoch: int  # 1-based
    resumed_from_epoch: int  # completed epochs found in the checkpoint (0: fresh start)
    train_seconds: float  # wall time of all attempts together
    # The kept model's fp32 logits on the validation split, in its order, when training has
    # them without running the images again: feature extraction's kept head on the cached
    # features. None: calibration and the report run the model over the images.
    validation_logits: torch.Tensor | None = None


def cpu_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}


def checkpoint_of(run: Run, state: TrainState) -> Checkpoint:
    """Everything a resume needs; the best weights only when they are not the last."""
    best = state.best
    return Checkpoint(
        job_id=run.job_id,
        backbone=run.plan.backbone,
        classes=list(run.classes),
        dataset_fingerprint=run.dataset_fingerprint,
        plan=run.plan,
        epoch=state.epoch,
        model_state=run.kept_state() if run.head_only_weights else run.model.state_dict(),
        optimizer_state=state.optimizer.state_dict(),
        scheduler_state=state.scheduler.state_dict(),
        rng=RngState.capture(),
        best_metric=best.accuracy,
        best_loss=best.loss,
        best_epoch=best.epoch,
        best_metrics=best.metrics,
        best_state=None if best.epoch == state.epoch else best.weights,
        history=state.history,
        train_seconds=state.train_seconds(),
        extra={
            "pretrained": run.pretrained,
            "update_bn_statistics": run.update_bn_statistics,
            "architecture": run.spec.architecture,
            "weights": "head" if run.head_only_weights else "model",
        },
    )
