"""The card of a trained model, as the worker registers it (graft.registry.card)."""

from __future__ import annotations

import torch

from graft.backbones import get_spec
from graft.data import ScannedDataset
from graft.domain import Job, TrainingPlan
from graft.registry import DatasetSummary, ModelCard, Preprocessing, TrainingSummary
from graft.training.loop import TrainResult


def model_card(
    job: Job, plan: TrainingPlan, dataset: ScannedDataset, result: TrainResult, device: torch.device
) -> ModelCard:
    """The card of the model `job` trained (the registry and the store add its identity)."""
    spec = get_spec(plan.backbone)
    return ModelCard(
        backbone=plan.backbone,
        labels=tuple(dataset.classes),
        preprocessing=Preprocessing.from_spec(spec, plan.image_size),
        plan=plan,
        job_id=job.job_id,
        architecture=spec.architecture,
        metrics=result.metrics,
        dataset=DatasetSummary(
            fingerprint=dataset.fingerprint,
            images=len(dataset.samples),
            skipped_files=len(dataset.skipped),
            counts=dataset.counts(),
        ),
        training=TrainingSummary(
            epochs_run=result.epochs_run,
            best_epoch=result.best_epoch,
            resumed_from_epoch=result.resumed_from_epoch,
            train_seconds=result.train_seconds,
            device=str(device),
            attempts=job.attempts,
        ),
    )
