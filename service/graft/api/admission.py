"""Admission control: per-method concurrency limits with bounded waiting queues.

Each AdaptationService method has a `Limit`: at most `concurrency` of its RPCs run at once,
at most `queue` more wait (first come, first served) for a slot, and any RPC beyond that is
answered RESOURCE_EXHAUSTED at once, with a google.rpc.RetryInfo hint (the method's recent
mean handling time), never left hanging. A waiting RPC honours its deadline and its client's
cancellation: grpc.aio cancels its task, and the place it held in the queue is given up.
Health and reflection are never limited, so probes answer under any load.

Limits are configuration (`Config.rpc_limits`, `graft serve --limit Method=C[:Q]`); the
defaults below are sized for one host (docs/OPERATIONS.md § Admission control).
"""

from __future__ import annotations

import asyncio
import collections
import inspect
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import grpc

from graft import errors
from graft.api.errors import WrappingInterceptor, wrap_handler


@dataclass(frozen=True)
class Limit:
    concurrency: int  # RPCs of the method running at once
    queue: int  # RPCs waiting for a slot beyond those (0: refuse at once)


# "*" is every method not named. StreamProgress is nearly free per stream (one subscription
# to the progress watcher); Advise holds an advisor lane's work; Predict is the one RPC that
# computes in this process (its executor bounds the CPU, this bounds memory and latency).
DEFAULT_LIMITS: Mapping[str, Limit] = {
    "Advise": Limit(16, 16),
    "CompareModels": Limit(16, 16),  # like Advise: each holds a task in the advisor lane
    "ExportModel": Limit(4, 16),  # a task in the advisor lane, then tens of MB streamed
    "GetModelReport": Limit(16, 64),  # reads a report's files (a few hundred kB) into memory
    "StartFineTune": Limit(16, 64),
    "UploadDataset": Limit(4, 4),
    "Predict": Limit(64, 1024),
    "StreamProgress": Limit(20_000, 0),
    "*": Limit(256, 1024),
}


def parse_limits(entries: Iterable[str]) -> dict[str, Limit]:
    """DEFAULT_LIMITS overridden by "Method=C" or "Method=C:Q" entries (ValueError if bad)."""
    limits = dict(DEFAULT_LIMITS)
    for entry in entries:
        name, sep, value = entry.partition("=")
        concurrency, _, queue = value.partition(":")
        try:
            limit = Limit(int(concurrency), int(queue or 0))
        except ValueError:
            limit = Limit(0, -1)
        if not sep or not name or limit.concurrency < 1 or limit.queue < 0:
            raise ValueError(f"bad limit {entry!r}: expected Method=C or Method=C:Q, C >= 1")
        limits[name] = limit
    return limits


class _Gate:
    """One method's slots and its FIFO of waiters (all on the event loop: no locks)."""

    def __init__(self, limit: Limit) -> None:
        self.limit = limit
        self.running = 0
        self.waiters: collections.deque[asyncio.Future[None]] = collections.deque()
        self.mean_seconds = 0.1  # moving average of handling time: the retry hint

    async def acquire(self, method: str) -> None:
        if self.running < self.limit.concurrency and not self.waiters:
            self.running += 1
            return
        if len(self.waiters) >= self.limit.queue:
            raise errors.ResourceExhausted(
                f"{method}: {self.running} running and {len(self.waiters)} waiting, the most"
                f" this server admits; retry in {self.mean_seconds:.2f} s",
                retry_after=min(30.0, max(0.05, self.mean_seconds)),
            )
        waiter = asyncio.get_running_loop().create_future()
        self.waiters.append(waiter)
        try:
            await waiter  # release() hands its slot over, running stays counted
        except BaseException:  # cancelled or past its deadline while waiting
            if waiter.done() and not waiter.cancelled():
                self.release(0.0)  # the slot was handed over just now: pass it on
            else:
                self.waiters.remove(waiter)
            raise

    def release(self, seconds: float) -> None:
        if seconds:
            self.mean_seconds += 0.2 * (seconds - self.mean_seconds)
        while self.waiters:
            waiter = self.waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return
        self.running -= 1


class AdmissionInterceptor(WrappingInterceptor):
    """Applies the limits to the AdaptationService's methods (install it innermost, inside
    the error boundary, which turns its ResourceExhausted into the status)."""

    def __init__(
        self,
        service: str,
        limits: Mapping[str, Limit],
        observe: Callable[[str, int, int, bool], None] | None = None,
    ) -> None:
        self.prefix = f"/{service}/"
        self.limits = dict(limits)
        self.gates: dict[str, _Gate] = {}
        # observe(method, running, waiting, rejected): metrics hook, called on each change.
        self.observe = observe or (lambda *_: None)

    def gate(self, method: str) -> _Gate:
        if method not in self.gates:
            self.gates[method] = _Gate(self.limits.get(method) or self.limits["*"])
        return self.gates[method]

    def wrap(self, handler: grpc.RpcMethodHandler, full_method: str) -> grpc.RpcMethodHandler:
        if not full_method.startswith(self.prefix):
            return handler  # health, reflection: never limited
        method = full_method[len(self.prefix) :]
        gate = self.gate(method)

        async def enter() -> float:
            try:
                await gate.acquire(method)
            except errors.ResourceExhausted:
                self.observe(method, gate.running, len(gate.waiters), True)
                raise
            self.observe(method, gate.running, len(gate.waiters), False)
            return time.perf_counter()

        def leave(t0: float) -> None:
            gate.release(time.perf_counter() - t0)
            self.observe(method, gate.running, len(gate.waiters), False)

        def wrap(fn: Callable[..., Any]) -> Callable[..., Any]:
            if inspect.isasyncgenfunction(fn):

                async def stream(request: Any, context: grpc.aio.ServicerContext) -> Any:
                    t0 = await enter()
                    try:
                        async for response in fn(request, context):
                            yield response
                    finally:
                        leave(t0)

                return stream

            async def unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
                t0 = await enter()
                try:
                    return await fn(request, context)
                finally:
                    leave(t0)

            return unary

        return wrap_handler(handler, wrap)
