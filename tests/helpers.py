"""Helpers shared by tests: a servable model without training; the images Advise decodes."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from pathlib import Path

import pytest
import torch

import graft.advisor.measure as measure_module
from graft.backbones import DEFAULT_BACKBONE, create_model, get_spec
from graft.config import Config
from graft.domain import DEFAULT_TENANT, Strategy, TrainingPlan
from graft.registry import ModelCard, ModelRegistry, Preprocessing
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
        card = ModelCard(
            backbone=DEFAULT_BACKBONE,
            architecture=spec.architecture,
            labels=tuple(labels),
            preprocessing=Preprocessing.from_spec(spec, image_size),
            plan=plan,
            job_id=uuid.uuid4().hex,  # a job of its own: one version per job and name
        )
        ModelRegistry(store, config.registry_dir).register(
            name=name, state_dict=model.state_dict(), card=card, tenant=tenant
        )
    finally:
        store.close()


def count_decodes(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """The paths Advise decodes from now on, in order (measure.load_image counted)."""
    decoded: list[Path] = []
    real_load = measure_module.load_image

    def counting_load(path: Path):  # type: ignore[no-untyped-def]
        decoded.append(path)
        return real_load(path)

    monkeypatch.setattr(measure_module, "load_image", counting_load)
    return decoded
