"""A servable model version: the network built from a registered artifact, its
preprocessing exactly as trained, and the runtime that computes it (graft.predict.runtimes
picks it at load), all read from the version's typed card (graft.registry.card). The
Predict engine (predictor.py) caches these.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from graft.backbones import GraftModel, create_model, get_spec
from graft.data import eval_transform
from graft.data.images import DEFAULT_MAX_IMAGE_PIXELS
from graft.domain import ModelVersion
from graft.predict.batching import BatchPolicy
from graft.predict.preprocess import Preprocess
from graft.predict.runtimes import EagerRuntime, Runtime, Trial, choose_runtime
from graft.predict.settings import PredictSettings
from graft.registry.card import ModelCard

log = logging.getLogger("graft.predict.predictor")  # the name its log lines always had


@dataclass(eq=False)
class LoadedModel:
    """A servable model version: the model, its preprocessing exactly as trained, and the
    runtime that computes it (eager until `choose_runtime` picks a faster one)."""

    version: ModelVersion
    model: GraftModel
    transform: Callable[[Any], torch.Tensor]  # training's eval transform (reference)
    labels: tuple[str, ...]
    preprocess: Preprocess
    policy: BatchPolicy = field(default_factory=BatchPolicy)
    runtime: Runtime = field(init=False)
    trials: list[Trial] = field(default_factory=list)
    # The card's temperature (ModelCard.temperature): every runtime's logits are divided by
    # it before the softmax; 1 when calibration was not applied or the card predates it.
    temperature: float = 1.0

    def __post_init__(self) -> None:
        self.runtime = EagerRuntime(self.model)

    @property
    def architecture(self) -> tuple[Any, ...]:
        """What decides which runtime is fastest: versions alike in this choose alike."""
        m = self.model
        size = self.preprocess.image_size
        return (m.spec.name, m.feature_stages, m.feature_grid, size, len(self.labels))

    def warm_up(self) -> None:
        """One eager forward pass, so the first request meets no first-call cost."""
        self.forward([np.zeros((self.preprocess.image_size,) * 2 + (3,), np.uint8)])

    def choose_runtime(self, settings: PredictSettings, known: str | None = None) -> None:
        """Measure settings.runtimes on this model (only `known` if given and it works) and
        switch to the fastest that answers like eager; it has run by then (warm)."""
        runtime, self.trials = choose_runtime(
            self.model,
            self.preprocess.image_size,
            settings.runtimes,
            settings.threads_per_runner,
            min(self.policy.max_batch, 16),
            known,
        )
        self.runtime = runtime  # one assignment: runners read it per batch
        log.info(
            "model %s:%d serves with %s (%s)",
            self.version.name,
            self.version.version,
            runtime.name,
            "; ".join(t.describe() for t in self.trials),
        )

    def forward(self, arrays: Sequence[np.ndarray]) -> torch.Tensor:
        """Probabilities (N, C) for preprocessed images: softmax(logits / temperature),
        whichever runtime computed the logits. A runtime that fails here is
        replaced by eager for good (logged), and the batch reruns on eager."""
        batch = self.preprocess.to_batch(arrays)
        runtime = self.runtime
        try:
            logits = runtime(batch)
        except Exception:
            if isinstance(runtime, EagerRuntime):
                raise
            log.exception(
                "model %s:%d: runtime %s failed; falling back to eager",
                self.version.name,
                self.version.version,
                runtime.name,
            )
            self.runtime = EagerRuntime(self.model)
            logits = self.runtime(batch)
        return torch.softmax(logits / self.temperature, dim=1)


def build_model(
    version: ModelVersion,
    state: dict[str, torch.Tensor],
    card: ModelCard,
    policy: BatchPolicy | None = None,
    max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
) -> LoadedModel:
    """A servable model from a registered artifact: the architecture with random init and
    the plan's feature cut, then the artifact's weights, strictly; preprocessing exactly as
    the card recorded it. It computes eagerly until `choose_runtime`."""
    pre = card.preprocessing
    spec = dataclasses.replace(
        get_spec(card.backbone),
        mean=pre.mean,
        std=pre.std,
        interpolation=pre.interpolation,
        crop_pct=pre.crop_pct,
    )
    # A model trained on a feature cut serves with it; the body keeps every weight either way.
    model = create_model(
        spec.name,
        len(card.labels),
        pretrained=False,
        feature_stages=card.plan.feature_stages,
        feature_grid=card.plan.feature_grid,
    )
    model.load_state_dict(state, strict=True)
    model.eval().to(memory_format=torch.channels_last)
    return LoadedModel(
        version,
        model,
        eval_transform(spec, pre.image_size),
        card.labels,
        Preprocess(spec, pre.image_size, max_pixels=max_pixels),
        policy or BatchPolicy(),
        temperature=card.temperature,
    )
