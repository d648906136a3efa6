"""Draining without surprises on SIGTERM: refuse new AdaptationService RPCs, count the
running ones so shutdown can wait for them."""

from __future__ import annotations

import asyncio
import inspect
import threading
import time
from collections.abc import Callable
from typing import Any

import grpc

from graft.api.errors import WrappingInterceptor, wrap_handler
from graft.api.health import SERVICE_NAME


class DrainGate(WrappingInterceptor):
    """Draining without surprises: once `draining` is set, a new AdaptationService RPC is
    refused with UNAVAILABLE (which clients retry elsewhere) instead of being cut off later;
    RPCs already running are counted, so shutdown can wait for them (`wait_idle`) before
    the gRPC server stops (which would cancel whatever still runs or waits)."""

    def __init__(self, draining: threading.Event) -> None:
        self.draining = draining
        self.in_flight = 0
        self._last_arrival = 0.0

    async def wait_idle(self, timeout: float, quiet: float = 1.0) -> bool:
        """Wait until no RPC runs and none has arrived for `quiet` seconds (True), or
        `timeout` seconds pass (False). The quiet period lets clients' transparent retries
        of UNAVAILABLE run out against this server rather than meet a stopped one, which
        would answer CANCELLED."""
        deadline = time.monotonic() + timeout
        while True:
            now = time.monotonic()
            if self.in_flight == 0 and now - self._last_arrival >= quiet:
                return True
            if now >= deadline:
                return False
            await asyncio.sleep(min(0.05, deadline - now))

    def wrap(self, handler: grpc.RpcMethodHandler, method: str) -> grpc.RpcMethodHandler:
        if not method.startswith(f"/{SERVICE_NAME}/"):
            # Health checks and reflection answer throughout (health says NOT_SERVING) and
            # are not waited for: a client's open health Watch must not hold the shutdown.
            return handler

        async def admit(context: grpc.aio.ServicerContext) -> None:
            self._last_arrival = time.monotonic()
            if self.draining.is_set():
                await context.abort(
                    grpc.StatusCode.UNAVAILABLE,
                    "server is shutting down; retry (another instance, or this one restarted)",
                )
            self.in_flight += 1

        def wrap(fn: Callable[..., Any]) -> Callable[..., Any]:
            if inspect.isasyncgenfunction(fn):

                async def stream(request: Any, context: grpc.aio.ServicerContext) -> Any:
                    await admit(context)
                    try:
                        async for response in fn(request, context):
                            yield response
                    finally:
                        self.in_flight -= 1

                return stream

            async def unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
                await admit(context)
                try:
                    return await fn(request, context)
                finally:
                    self.in_flight -= 1

            return unary

        return wrap_handler(handler, wrap)
