"""The dynamic batcher: concurrent Predict requests for one model version share a forward
pass, run by a fixed set of runner threads.

Why this shape. Before it, each request ran alone under a per-model lock: ~80 img/s at any
concurrency, while the model itself does well over 1,000 img/s in batches (issue 11). The
policy here is the one that keeps a lone request fast and a crowd efficient:

- A runner that is idle takes whatever is queued *at once* (a lone request is never held
  back waiting for company). While every runner is busy, requests accumulate, and the next
  runner to free up takes up to `max_batch` images of them in one forward pass. So batches
  grow with load by themselves, with no timer on the latency path.
- `max_delay` (0 by default) lets an idle runner wait up to that long after the oldest
  request arrived for a fuller batch (TorchServe's max_batch_delay), for models where a
  bigger batch is much cheaper per image than the latency it costs.
- Requests stay whole: a forward pass takes whole requests while they fit in `max_batch`
  (the first one always, a larger one in chunks of `max_batch`), and each request gets its
  own rows back, in its own order. Queues are per model version; a free runner serves the
  version whose oldest request has waited longest.
- Deadlines and cancellation: a request's future is cancelled when its caller goes away or
  its deadline passes (the handler does that); a runner skips cancelled requests and fails
  any whose deadline has passed with DeadlineExceeded, so neither costs a forward pass and
  the others in the queue are unaffected.

Runners are threads: ONNX Runtime and TorchScript release the GIL for the whole forward
pass, and decode runs in its own pool, so runners, decode and the gRPC event loop overlap.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import torch

from graft import errors
from graft.predict.pool import settle_threadsafe

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BatchPolicy:
    max_batch: int = 32
    max_delay: float = 0.0  # seconds an idle runner may wait for a fuller batch


class Servable(Protocol):
    """What the batcher needs of a loaded model version."""

    @property
    def policy(self) -> BatchPolicy: ...

    @property
    def labels(self) -> tuple[str, ...]: ...

    def forward(self, arrays: Sequence[np.ndarray]) -> torch.Tensor:
        """Class probabilities (N, C) for N preprocessed uint8 images."""
        ...


@dataclass
class Answer:
    """One request's share of a forward pass: top-k (label, probability) per image, and
    the stage times it saw."""

    classes: list[list[tuple[str, float]]]
    queue_seconds: float
    inference_seconds: float
    postprocess_seconds: float


@dataclass(eq=False)
class Pending:
    """One request's decoded images, waiting for a forward pass. Its answer goes to
    `future`: a concurrent.futures.Future for blocking callers, or, with `loop` set, an
    asyncio future of that loop (settled there in one hop per batch, no extra thread)."""

    model: Servable
    inputs: list[np.ndarray]
    top_k: int
    deadline: float | None = None  # time.monotonic() after which the answer is useless
    enqueued: float = field(default_factory=time.perf_counter)
    future: Future[Answer] | asyncio.Future[Answer] = field(default_factory=Future)
    loop: asyncio.AbstractEventLoop | None = None

    def claim(self) -> bool:
        """Whether to run it: False when its caller has gone (the future is cancelled).
        A concurrent future moves to RUNNING, so it can no longer be cancelled."""
        if self.loop is None:
            assert isinstance(self.future, Future)
            return self.future.set_running_or_notify_cancel()
        return not self.future.cancelled()


def resolve(items: Sequence[Pending], outcomes: Sequence[Answer | BaseException]) -> None:
    """Hand each item its answer or error: concurrent futures directly, asyncio futures
    with one call_soon_threadsafe per loop for the whole batch."""
    by_loop: dict[asyncio.AbstractEventLoop, list[tuple[Any, Any]]] = {}
    for item, outcome in zip(items, outcomes, strict=True):
        if item.loop is not None:
            by_loop.setdefault(item.loop, []).append((item.future, outcome))
            continue
        assert isinstance(item.future, Future)
        if item.future.done():
            continue
        if isinstance(outcome, BaseException):
            item.future.set_exception(outcome)
        else:
            item.future.set_result(outcome)
    for loop, pairs in by_loop.items():
        settle_threadsafe(loop, pairs)


class Batcher:
    """Runner threads over per-model queues (see the module docstring for the policy).
    `submit` is thread-safe and never blocks; `close` fails what is still queued with
    UNAVAILABLE and stops the runners."""

    def __init__(
        self,
        runners: int,
        on_forward: Callable[[int], None] | None = None,
        setup_thread: Callable[[], None] | None = None,
    ) -> None:
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._queues: dict[int, collections.deque[Pending]] = {}
        self._images: dict[int, int] = {}
        self._closed = False
        # Runners with nothing to do, each waiting on its own condition, the last to go
        # idle on top: new work wakes the runner that ran last, whose caches still hold
        # the model. (One shared condition wakes the longest idle, so at concurrency 1
        # two runners took turns: 2.56 ms of CPU a pass instead of 2.0, bench/runtime_gaps.py.)
        self._idle: list[threading.Condition] = []
        self._on_forward = on_forward
        self._setup_thread = setup_thread
        self._threads = [
            threading.Thread(target=self._run, name=f"predict-runner-{i}", daemon=True)
            for i in range(max(1, runners))
        ]
        for t in self._threads:
            t.start()

    @property
    def runners(self) -> int:
        return len(self._threads)

    def submit(self, item: Pending) -> Future[Answer] | asyncio.Future[Answer]:
        key = id(item.model)
        with self._cond:
            if self._closed:
                raise errors.Unavailable("the server is shutting down")
            self._queues.setdefault(key, collections.deque()).append(item)
            self._images[key] = self._images.get(key, 0) + len(item.inputs)
            if self._idle:
                self._idle.pop().notify()
            else:
                self._cond.notify()  # a runner waiting out max_delay for a fuller batch
        return item.future

    def idle(self) -> bool:
        """Whether a runner is waiting and nothing is queued: a request submitted now is
        computed at once. A racy read, good enough to choose where to decode."""
        return bool(self._idle) and not self._images

    def queued_images(self) -> int:
        with self._cond:
            return sum(self._images.values())

    def close(self, timeout: float = 5.0) -> None:
        with self._cond:
            self._closed = True
            left = [item for q in self._queues.values() for item in q]
            self._queues.clear()
            self._images.clear()
            self._cond.notify_all()
            for waiting in self._idle:
                waiting.notify()
            self._idle.clear()
        left = [item for item in left if item.claim()]
        resolve(left, [errors.Unavailable("the server is shutting down") for _ in left])
        for t in self._threads:
            t.join(timeout)

    # -- runner side ----------------------------------------------------------------------

    def _run(self) -> None:
        if self._setup_thread is not None:
            self._setup_thread()
        while True:
            batch = self._next_batch()
            if batch is None:
                return
            try:
                self._forward(batch)
            except Exception as exc:  # never lose a runner; the callers get the error
                log.exception("Predict forward pass failed")
                resolve(batch, [exc] * len(batch))

    def _next_batch(self) -> list[Pending] | None:
        """Block until there is work (None once closed), then take it (see the policy)."""
        me = threading.Condition(self._lock)
        with self._cond:
            while not self._closed:
                key = self._oldest()
                if key is None:
                    self._idle.append(me)
                    me.wait()
                    if me in self._idle:  # woken by something else than a submit
                        self._idle.remove(me)
                    continue
                queue = self._queues[key]
                policy = queue[0].model.policy
                wait = queue[0].enqueued + policy.max_delay - time.perf_counter()
                if wait > 0 and self._images[key] < policy.max_batch:
                    self._cond.wait(wait)  # an idle runner may wait for a fuller batch
                    continue
                batch = self._take(key, policy.max_batch)
                if batch:
                    return batch
            return None

    def _oldest(self) -> int | None:
        heads = [(q[0].enqueued, key) for key, q in self._queues.items() if q]
        return min(heads)[1] if heads else None

    def _take(self, key: int, max_batch: int) -> list[Pending]:
        """Whole requests from the head of queue `key` while they fit in `max_batch` (the
        first always); cancelled ones are dropped, expired ones failed, on the way."""
        queue = self._queues[key]
        taken: list[Pending] = []
        images = 0
        now = time.monotonic()
        while queue and (not taken or images + len(queue[0].inputs) <= max_batch):
            item = queue.popleft()
            self._images[key] -= len(item.inputs)
            if not item.claim():
                continue  # its caller went away
            if item.deadline is not None and now >= item.deadline:
                expired = errors.DeadlineExceeded("the deadline passed while waiting for the model")
                resolve([item], [expired])
                continue
            taken.append(item)
            images += len(item.inputs)
        if not queue:
            del self._queues[key], self._images[key]
        return taken

    def _forward(self, batch: list[Pending]) -> None:
        started = time.perf_counter()
        model = batch[0].model
        arrays = [a for item in batch for a in item.inputs]
        size = model.policy.max_batch
        chunks = [model.forward(arrays[i : i + size]) for i in range(0, len(arrays), size)]
        probs = chunks[0] if len(chunks) == 1 else torch.cat(chunks)
        if self._on_forward is not None:
            for i in range(0, len(arrays), size):
                self._on_forward(len(arrays[i : i + size]))
        inferred = time.perf_counter()
        # One top-k for the whole batch, at the largest k asked: each request's k best are
        # the first k of those (topk sorts).
        k = min(max(item.top_k for item in batch), len(model.labels))
        scores, classes = (t.tolist() for t in probs.topk(k, dim=1))
        labels = model.labels
        answers = []
        row = 0
        for item in batch:
            n = min(item.top_k, k)
            answers.append(
                [
                    [(labels[c], s) for s, c in zip(scores[r][:n], classes[r][:n], strict=True)]
                    for r in range(row, row + len(item.inputs))
                ]
            )
            row += len(item.inputs)
        done = time.perf_counter()
        resolve(
            batch,
            [
                Answer(classes_, started - item.enqueued, inferred - started, done - inferred)
                for item, classes_ in zip(batch, answers, strict=True)
            ],
        )
