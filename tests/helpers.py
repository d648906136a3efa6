"""Helpers shared by tests: a servable model without training."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from graft.backbones import DEFAULT_BACKBONE, create_model, get_spec
from graft.config import Config
from graft.domain import DEFAULT_TENANT, Strategy, TrainingPlan
from graft.predict.model import card_preprocessing
from graft.registry import ModelRegistry
from graft.store import open_store


def register_random_model(
    data_dir: Path,
    name: str,
    labels: Sequence[str] = ("a", "b"),
    image_size: int = 32,
    tenant: str = DEFAULT_TENANT,
) -> None:
    """Register a randomly initialised default-backbone model under `name` (of `tenant`)
    in the store and registry of `data_dir`, exactly as a worker registers a trained one, so
    Predict can serve it (its answers are meaningless; latency and plumbing are what such
    tests see)."""
    config = Config(data_dir=data_dir)
    store = open_store(config)
    try:
        spec = get_spec(DEFAULT_BACKBONE)
        torch.manual_seed(0)
        model = create_model(DEFAULT_BACKBONE, len(labels), pretrained=False)
        plan = TrainingPlan(
            backbone=DEFAULT_BACKBONE, strategy=Strategy.FEATURE_EXTRACTION, image_size=image_size
        )
        card = {
            "backbone": DEFAULT_BACKBONE,
            "architecture": spec.architecture,
            "labels": list(labels),
            "preprocessing": card_preprocessing(spec, image_size),
            "plan": plan.to_dict(),
            "job_id": "0" * 32,
        }
        ModelRegistry(store, config.registry_dir).register(
            name=name,
            job_id="0" * 32,
            backbone=DEFAULT_BACKBONE,
            labels=list(labels),
            state_dict=model.state_dict(),
            card=card,
            metrics=None,
            tenant=tenant,
        )
    finally:
        store.close()
