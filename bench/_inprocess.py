"""What the in-process training benches share: the worker's own `train()` on a scanned
dataset's split, on the CPU unless told, its events dropped unless an `emit` is given, never
asked to stop.

Not a bench itself: bench/departure_sizes.py, frozen_stages.py, calibrate_signals.py,
lp_ft.py, head_epochs.py and train_strategies.py import it.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from graft.data import Sample, ScannedDataset
from graft.domain import TrainingPlan
from graft.training import loop
from graft.training.state import TrainResult


def train_split(
    plan: TrainingPlan,
    dataset: ScannedDataset,
    train_samples: Sequence[Sample],
    val_samples: Sequence[Sample],
    checkpoint_dir: Path,
    *,
    job_id: str = "bench",
    device: torch.device | None = None,
    **options: Any,
) -> TrainResult:
    """`loop.train` of `plan` on `dataset`'s split (pretrained weights from the local
    cache); `options` are train's own (`emit`, `pretrained`, `cache_frozen_stages`, …)."""
    options.setdefault("emit", lambda event: None)
    return loop.train(
        job_id=job_id,
        plan=plan,
        classes=dataset.classes,
        train_samples=list(train_samples),
        val_samples=list(val_samples),
        dataset_fingerprint=dataset.fingerprint,
        weights_dir=None,
        checkpoint_dir=checkpoint_dir,
        device=device or torch.device("cpu"),
        should_stop=lambda: False,
        **options,
    )
