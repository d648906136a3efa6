"""Predict, staged: decode/preprocess → infer (under inference_mode) → postprocess.

Models are loaded from the registry on first use and kept in a bounded LRU cache. Each
image's failure (undecodable bytes, say) is attached to that image alone.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from graft import errors
from graft.backbones import GraftModel, create_model, get_spec
from graft.backbones.spec import PretrainedSpec
from graft.data import eval_transform, load_image
from graft.domain import ModelRef, ModelVersion
from graft.registry import ModelRegistry
from graft.store import JobStore

if TYPE_CHECKING:
    from graft.observability.metrics import ServerMetrics

log = logging.getLogger(__name__)


@dataclass
class LoadedModel:
    version: ModelVersion
    model: GraftModel
    transform: Callable[[Any], torch.Tensor]
    labels: tuple[str, ...]
    lock: threading.Lock = field(default_factory=threading.Lock)


@dataclass
class ImageResult:
    """Top-k (label, probability) pairs, or the error that stopped this one image."""

    classes: list[tuple[str, float]] = field(default_factory=list)
    error: errors.GraftError | None = None


@dataclass
class PredictResult:
    version: ModelVersion
    results: list[ImageResult]
    stage_seconds: dict[str, float]


def card_preprocessing(spec: PretrainedSpec, image_size: int) -> dict[str, Any]:
    """The model card's `preprocessing` block: what build_model reads back to preprocess
    exactly as in training."""
    return {
        "image_size": image_size,
        "mean": list(spec.mean),
        "std": list(spec.std),
        "interpolation": spec.interpolation,
        "crop_pct": spec.crop_pct,
    }


def build_model(
    version: ModelVersion, state: dict[str, torch.Tensor], card: dict[str, Any]
) -> LoadedModel:
    """A servable model from a registered artifact: the architecture with random init and
    the plan's feature cut, then the artifact's weights, strictly; preprocessing exactly as
    the card recorded it."""
    spec = get_spec(card["backbone"])
    pre = card.get("preprocessing", {})
    spec = dataclasses.replace(
        spec,
        mean=tuple(pre.get("mean", spec.mean)),
        std=tuple(pre.get("std", spec.std)),
        interpolation=pre.get("interpolation", spec.interpolation),
        crop_pct=pre.get("crop_pct", spec.crop_pct),
    )
    labels = tuple(card["labels"])
    # A model trained on a feature cut serves with it; the body keeps every weight either way.
    model = create_model(
        spec.name,
        len(labels),
        pretrained=False,
        feature_stages=tuple(card["plan"].get("feature_stages", [])),
        feature_grid=int(card["plan"].get("feature_grid", 0)),
    )
    model.load_state_dict(state, strict=True)
    model.eval().to(memory_format=torch.channels_last)
    image_size = int(pre.get("image_size") or card["plan"]["image_size"])
    return LoadedModel(version, model, eval_transform(spec, image_size), labels)


class Predictor:
    def __init__(
        self,
        registry: ModelRegistry,
        store: JobStore,
        cache_size: int = 4,
        metrics: ServerMetrics | None = None,
    ) -> None:
        self._metrics = metrics
        self._registry = registry
        self._store = store
        self._cache_size = max(1, cache_size)
        self._cache: OrderedDict[tuple[str, int], LoadedModel] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0
        self.evictions = 0

    def loaded(self) -> list[tuple[str, int]]:
        with self._lock:
            return list(self._cache)

    def _get(self, ref: ModelRef) -> tuple[LoadedModel, bool]:
        """The loaded model and whether it came from the cache."""
        version = self._store.resolve_model(ref)
        key = (version.name, version.version)
        m = self._metrics
        with self._lock:
            hit = self._cache.get(key)
            if hit is not None:
                self._cache.move_to_end(key)
                self.hits += 1
                if m:
                    m.cache_hits.inc()
                return hit, True
        # Load outside the cache lock: a slow load must not block Predict on other models.
        loaded_version, state, card = self._registry.load(
            ModelRef(name=version.name, version=version.version)
        )
        loaded = build_model(loaded_version, state, card)
        with self._lock:
            self.misses += 1
            self._cache[key] = loaded
            self._cache.move_to_end(key)
            while len(self._cache) > self._cache_size:
                evicted, _ = self._cache.popitem(last=False)
                self.evictions += 1
                if m:
                    m.cache_evictions.inc()
                log.info("evicted model %s:%d from the Predict cache", *evicted)
            if m:
                m.cache_misses.inc()
                m.loaded_models.set(len(self._cache))
        return loaded, False

    def predict(self, ref: ModelRef, images: Sequence[bytes], top_k: int) -> PredictResult:
        timings: dict[str, float] = {}
        started = time.perf_counter()
        loaded, cache_hit = self._get(ref)
        timings["load"] = time.perf_counter() - started

        # Stage 1: decode + preprocess; failures stay with their image.
        t0 = time.perf_counter()
        results = [ImageResult() for _ in images]
        tensors: list[torch.Tensor] = []
        index: list[int] = []
        for i, data in enumerate(images):
            try:
                tensors.append(loaded.transform(load_image(data)))
                index.append(i)
            except errors.GraftError as exc:
                results[i].error = exc
        if tensors:
            batch = torch.stack(tensors).contiguous(memory_format=torch.channels_last)
        timings["decode"] = time.perf_counter() - t0

        # Stage 2: wait for the model (one inference at a time per model), then infer.
        t0 = time.perf_counter()
        probs = torch.empty(0)
        timings["queue"] = 0.0
        if tensors:
            with loaded.lock:
                t1 = time.perf_counter()
                timings["queue"] = t1 - t0
                with torch.inference_mode():
                    probs = torch.softmax(loaded.model(batch).float(), dim=1)
            t0 = t1
        timings["inference"] = time.perf_counter() - t0

        # Stage 3: postprocess.
        t0 = time.perf_counter()
        k = min(top_k or 5, len(loaded.labels))
        if tensors:
            scores, classes = probs.topk(k, dim=1)
            for row, i in enumerate(index):
                results[i].classes = [
                    (loaded.labels[c], float(s))
                    for s, c in zip(scores[row].tolist(), classes[row].tolist(), strict=True)
                ]
        timings["postprocess"] = time.perf_counter() - t0
        if self._metrics:
            failed = sum(1 for r in results if r.error is not None)
            self._metrics.observe_predict(timings, len(images), failed, cache_hit)
        return PredictResult(loaded.version, results, timings)
