"""Predict, staged: decode/preprocess (decode pool) → queue → infer (a runner, batched with
other requests for the same model version) → postprocess; every stage timed.

Models are loaded from the registry on first use, once however many requests ask at the
same time (the others await that load without holding a thread), measured to pick their
fastest runtime (graft.predict.runtimes), warmed up, and kept in a bounded LRU cache. A
version evicted or replaced behind an alias keeps serving the requests already queued for
it. Each image's failure (undecodable bytes, say) is attached to that image alone.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Awaitable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from graft import errors
from graft.config import Config
from graft.domain import DEFAULT_TENANT, ModelRef, ModelVersion
from graft.predict.batching import Answer, Batcher, Pending
from graft.predict.model import LoadedModel, build_model
from graft.predict.pool import DecodePool, settle_threadsafe
from graft.predict.preprocess import check_request_pixels
from graft.predict.settings import PredictSettings
from graft.registry import ModelRegistry
from graft.store import JobStore

if TYPE_CHECKING:
    from graft.observability.metrics import ServerMetrics

log = logging.getLogger(__name__)

_INLINE_DECODE_BYTES = 256 * 1024  # a lone image this small may be decoded on the loop
_MAX_CACHED_REFS = 4096  # distinct model references resolved within ref_cache_seconds


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


@dataclass
class _Prepared:
    """A request after the decode stage: its model, its good images, per-image errors."""

    loaded: LoadedModel
    inputs: list[np.ndarray]
    index: list[int]  # the request's position of each input
    results: list[ImageResult]
    timings: dict[str, float]
    cache_hit: bool


class Predictor:
    """The Predict engine: model cache, decode pool, batcher. `predict_async` serves the
    asyncio API; `predict` is the same for blocking callers. `close()` stops it."""

    def __init__(
        self,
        registry: ModelRegistry,
        store: JobStore,
        cache_size: int = 4,
        metrics: ServerMetrics | None = None,
        settings: PredictSettings | None = None,
        decode_pool: DecodePool | None = None,
    ) -> None:
        self._metrics = metrics
        self._registry = registry
        self._store = store
        self.settings = settings or PredictSettings.from_config(Config())
        self._cache_size = max(1, cache_size)
        # (tenant, name, version): model names are per tenant.
        self._cache: OrderedDict[tuple[str, str, int], LoadedModel] = OrderedDict()
        self._loading: dict[tuple[str, str, int], Future[LoadedModel]] = {}
        self._lock = threading.Lock()
        self._own_pool = decode_pool is None
        self.decode_pool = decode_pool or DecodePool(self.settings.decode_threads)
        self._load_pool = ThreadPoolExecutor(2, thread_name_prefix="predict-load")
        self._choices: dict[tuple[Any, ...], str] = {}  # architecture -> fastest runtime
        # (name, alias, version) -> (resolved version, monotonic expiry); a generation per
        # model name, bumped by forget(), keeps a resolution read before a change out.
        self._refs: dict[tuple[str, str, str, int], tuple[ModelVersion, float]] = {}
        self._ref_generation: dict[tuple[str, str], int] = {}
        self._choose_lock = threading.Lock()
        threads = self.settings.threads_per_runner
        self._batcher = Batcher(
            self.settings.runners,
            on_forward=metrics.predict_forward_batch.observe if metrics else None,
            setup_thread=lambda: torch.set_num_threads(threads),  # per thread (OpenMP)
        )
        self.hits = 0
        self.misses = 0
        self.evictions = 0

    def loaded(self) -> list[tuple[str, str, int]]:
        with self._lock:
            return list(self._cache)

    def cached(self, name: str, version: int, tenant: str = DEFAULT_TENANT) -> LoadedModel | None:
        with self._lock:
            return self._cache.get((tenant, name, version))

    def queued_images(self) -> int:
        """Images waiting for a runner now (all models)."""
        return self._batcher.queued_images()

    def close(self) -> None:
        """Fail what is queued (UNAVAILABLE), stop the runners and the pools."""
        self._batcher.close()
        self._load_pool.shutdown(wait=False, cancel_futures=True)
        if self._own_pool:
            self.decode_pool.shutdown(wait=False, cancel_futures=True)

    # -- the model cache ------------------------------------------------------------------

    def forget(self, name: str, tenant: str = DEFAULT_TENANT) -> None:
        """Drop the cached resolutions of model `name` (an alias of it moved): the next
        call reads the store."""
        with self._lock:
            model = (tenant, name)
            self._ref_generation[model] = self._ref_generation.get(model, 0) + 1
            for key in [k for k in self._refs if k[:2] == model]:
                del self._refs[key]

    def _resolve(self, ref: ModelRef) -> ModelVersion:
        """The version `ref` names: from the store, or from a resolution at most
        `ref_cache_seconds` old (a store read per call was ~10% of Predict's decode stage)."""
        ttl = self.settings.ref_cache_seconds
        key = (ref.tenant, ref.name, ref.alias, ref.version)
        cached = self._refs.get(key)
        now = time.monotonic()
        if cached is not None and cached[1] > now:
            return cached[0]
        generation = self._ref_generation.get((ref.tenant, ref.name), 0)
        version = self._store.resolve_model(ref)
        if ttl > 0:
            with self._lock:
                if self._ref_generation.get((ref.tenant, ref.name), 0) == generation:
                    if len(self._refs) >= _MAX_CACHED_REFS:
                        self._refs.clear()
                    self._refs[key] = (version, now + ttl)
        return version

    def _resolved(self, ref: ModelRef) -> bool:
        """Whether `_resolve(ref)` would answer from the cache, without the store."""
        cached = self._refs.get((ref.tenant, ref.name, ref.alias, ref.version))
        return cached is not None and cached[1] > time.monotonic()

    def _lookup(self, ref: ModelRef) -> LoadedModel | Future[LoadedModel]:
        """The loaded version `ref` names, or a future of its load (started here unless one
        is under way: concurrent misses share one load)."""
        version = self._resolve(ref)
        key = (version.tenant, version.name, version.version)
        with self._lock:
            hit = self._cache.get(key)
            if hit is not None:
                self._cache.move_to_end(key)
                self.hits += 1
                if self._metrics:
                    self._metrics.cache_hits.inc()
                return hit
            self.misses += 1
            if self._metrics:
                self._metrics.cache_misses.inc()
            future = self._loading.get(key)
            if future is None:
                # Running from the start: one waiter giving up (cancel) must not cancel
                # the load the others wait for.
                future = self._loading[key] = Future()
                future.set_running_or_notify_cancel()
                self._load_pool.submit(self._load, key, future)
        return future

    def _load(self, key: tuple[str, str, int], future: Future[LoadedModel]) -> None:
        """Load, warm up eagerly and serve at once; then, still in this thread, measure the
        runtimes and switch to the fastest: a cache miss (an alias moved to a new version)
        waits for the load, never for the export and measurement."""
        try:
            torch.set_num_threads(self.settings.threads_per_runner)  # time as runners run
            tenant, name, number = key
            version, state, card = self._registry.load(ModelRef(name, number, tenant=tenant))
            loaded = build_model(
                version,
                state,
                card,
                self.settings.policy_for(name),
                self.settings.max_image_pixels,
            )
            loaded.warm_up()
        except BaseException as exc:
            with self._lock:
                del self._loading[key]
            future.set_exception(exc)
            return
        self._insert(key, loaded)
        future.set_result(loaded)
        try:
            # One choice at a time: torch.onnx.export and torch.jit.trace keep process-wide
            # state, and two loads exporting at once broke both (seen in bench/rss_soak.py:
            # "GLOBALS.in_onnx_export must be False", then a trace that "differed across
            # invocations"), leaving a model on eager.
            with self._choose_lock:
                loaded.choose_runtime(self.settings, self._choices.get(loaded.architecture))
            if loaded.runtime.name != "eager":  # eager may mean "the others failed": retry later
                self._choices[loaded.architecture] = loaded.runtime.name
        except Exception:  # it keeps serving on eager
            log.exception("model %s/%s:%d: choosing a runtime failed", *key)

    def _insert(self, key: tuple[str, str, int], loaded: LoadedModel) -> None:
        with self._lock:
            del self._loading[key]
            self._cache[key] = loaded
            while len(self._cache) > self._cache_size:
                evicted, _ = self._cache.popitem(last=False)
                self.evictions += 1
                if self._metrics:
                    self._metrics.cache_evictions.inc()
                log.info("evicted model %s/%s:%d from the Predict cache", *evicted)
            if self._metrics:
                self._metrics.loaded_models.set(len(self._cache))

    # -- stages ---------------------------------------------------------------------------

    def _decode(
        self, loaded: LoadedModel, images: Sequence[bytes], timings: dict[str, float], hit: bool
    ) -> _Prepared:
        t0 = time.perf_counter()
        results = [ImageResult() for _ in images]
        inputs: list[np.ndarray] = []
        index: list[int] = []
        for i, data in enumerate(images):
            try:
                inputs.append(loaded.preprocess.decode(data))
                index.append(i)
            except errors.GraftError as exc:
                results[i].error = exc
        timings["decode"] = time.perf_counter() - t0
        return _Prepared(loaded, inputs, index, results, timings, hit)

    def _prepare(self, ref: ModelRef, images: Sequence[bytes]) -> _Prepared | Future[LoadedModel]:
        """Resolve + decode in one trip to the decode pool when the model is loaded. The
        request's pixels are counted from the headers first (ResourceExhausted when too
        many), so no decoding starts for a request that would be refused."""
        t0 = time.perf_counter()
        check_request_pixels(
            images, self.settings.max_request_pixels, self.settings.max_image_pixels
        )
        found = self._lookup(ref)
        if isinstance(found, Future):
            return found
        return self._decode(found, images, {"load": time.perf_counter() - t0}, True)

    def _stage(
        self,
        ref: ModelRef,
        images: Sequence[bytes],
        top_k: int,
        deadline: float | None,
        future: asyncio.Future[Any],
        loop: asyncio.AbstractEventLoop,
        slot: list[_Prepared],
        inline: bool = False,
    ) -> None:
        """The decode stage of `predict_async`, on a decode thread. With the model loaded
        and something to infer, the request goes straight to the batcher and the runner
        answers `future` (an Answer; `slot` holds the rest). Otherwise `future` gets what
        the handler needs next: the _Prepared (no image decoded) or the load's Future.
        `inline`: called on the loop's own thread (a lone small image, a runner idle)."""
        try:
            prepared = self._prepare(ref, images)
        except Exception as exc:
            if not inline:
                raise  # the pool settles `future` with it
            future.set_exception(exc)
            return
        if isinstance(prepared, _Prepared) and prepared.inputs:
            slot.append(prepared)
            self._batcher.submit(self._pending(prepared, top_k, deadline, future, loop))
        elif inline:
            future.set_result(prepared)
        else:
            settle_threadsafe(loop, [(future, prepared)])

    def _pending(
        self,
        p: _Prepared,
        top_k: int,
        deadline: float | None,
        future: asyncio.Future[Answer] | None = None,
        loop: asyncio.AbstractEventLoop | None = None,
    ) -> Pending:
        k = min(top_k or 5, len(p.loaded.labels))
        if future is None:
            return Pending(p.loaded, p.inputs, k, deadline)
        return Pending(p.loaded, p.inputs, k, deadline, future=future, loop=loop)

    def _finish(self, p: _Prepared, answer: Answer | None) -> PredictResult:
        t = p.timings
        t["queue"] = answer.queue_seconds if answer else 0.0
        t["inference"] = answer.inference_seconds if answer else 0.0
        t["postprocess"] = answer.postprocess_seconds if answer else 0.0
        if answer is not None:
            for i, classes in zip(p.index, answer.classes, strict=True):
                p.results[i].classes = classes
        if self._metrics:
            failed = sum(1 for r in p.results if r.error is not None)
            self._metrics.observe_predict(t, len(p.results), failed, p.cache_hit)
        return PredictResult(p.loaded.version, p.results, t)

    # -- entry points ---------------------------------------------------------------------

    async def predict_async(
        self, ref: ModelRef, images: Sequence[bytes], top_k: int, timeout: float | None = None
    ) -> PredictResult:
        """Predict for the asyncio API: no thread is held while waiting for a model load or
        a runner. `timeout` (seconds, None: none) is the caller's remaining deadline:
        DeadlineExceeded when it passes first, and the queued request is dropped."""
        deadline = None if timeout is None else time.monotonic() + timeout
        t0 = time.perf_counter()
        loop = asyncio.get_running_loop()
        first: asyncio.Future[Any] = loop.create_future()
        slot: list[_Prepared] = []
        if (
            len(images) == 1
            and len(images[0]) <= _INLINE_DECODE_BYTES
            and self._batcher.idle()
            and self._resolved(ref)
        ):
            # A lone small image with a runner idle: decoding here (~0.1-0.3 ms) costs less
            # than the hop to a decode thread, and nothing else is waiting for the loop.
            # Only with the reference resolved already: a store read never blocks the loop.
            # Under load requests queue, and decoding stays in the pool, in parallel.
            self._stage(ref, images, top_k, deadline, first, loop, slot, inline=True)
        else:
            self.decode_pool.post(
                first, self._stage, ref, images, top_k, deadline, first, loop, slot
            )
        outcome = await _within(first, deadline)
        if isinstance(outcome, Answer):  # the usual path: decoded, batched, answered
            return self._finish(slot[0], outcome)
        if isinstance(outcome, _Prepared):  # no image could be decoded
            return self._finish(outcome, None)
        # The model is being loaded: await it, then decode and queue from here.
        loaded = await _within(asyncio.wrap_future(outcome), deadline)
        timings = {"load": time.perf_counter() - t0}
        prepared = await self.decode_pool.run(self._decode, loaded, images, timings, False)
        answer = None
        if prepared.inputs:
            future: asyncio.Future[Answer] = loop.create_future()
            self._batcher.submit(self._pending(prepared, top_k, deadline, future, loop))
            answer = await _within(future, deadline)
        return self._finish(prepared, answer)

    def predict(
        self, ref: ModelRef, images: Sequence[bytes], top_k: int, timeout: float | None = None
    ) -> PredictResult:
        """Predict for blocking callers (the same stages, decode in the calling thread)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        t0 = time.perf_counter()
        prepared = self._prepare(ref, images)
        if isinstance(prepared, Future):
            loaded = _result(prepared, deadline)
            prepared = self._decode(loaded, images, {"load": time.perf_counter() - t0}, False)
        answer = None
        if prepared.inputs:
            item = self._pending(prepared, top_k, deadline)
            self._batcher.submit(item)
            assert isinstance(item.future, Future)
            answer = _result(item.future, deadline)
        return self._finish(prepared, answer)


_EXPIRED = "the deadline passed while waiting for the model"


async def _within(awaitable: Awaitable[Any], deadline: float | None) -> Any:
    if deadline is None:
        return await awaitable
    try:
        return await asyncio.wait_for(awaitable, max(0.0, deadline - time.monotonic()))
    except TimeoutError:  # wait_for cancelled it: a queued request is dropped unrun
        raise errors.DeadlineExceeded(_EXPIRED) from None


def _result(future: Future[Any], deadline: float | None) -> Any:
    try:
        return future.result(None if deadline is None else max(0.0, deadline - time.monotonic()))
    except TimeoutError:
        future.cancel()
        raise errors.DeadlineExceeded(_EXPIRED) from None
