"""The conventional gRPC server metrics, recorded by `MetricsInterceptor` into
graft.observability.metrics.ServerMetrics. It lives with the API, not in
graft.observability, so the worker, which records its own metrics there, loads no gRPC
(docs/ARCHITECTURE.md)."""

from __future__ import annotations

import asyncio
import inspect
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc

from graft.api.errors import WrappingInterceptor, wrap_handler
from graft.observability.logs import log_context
from graft.observability.metrics import ServerMetrics


def _split_method(full: str) -> tuple[str, str]:
    # "/graft.v1.AdaptationService/Predict" -> ("graft.v1.AdaptationService", "Predict")
    _, service, method = full.split("/", 2) if full.count("/") >= 2 else ("", "", full)
    return service, method


# grpc_code values as go-grpc-prometheus spells them (Go's codes.Code.String()), which is
# what published dashboards and alerts for gRPC servers match on.
_CODE_NAMES = {
    code: "OK"
    if code == grpc.StatusCode.OK
    else "Canceled"
    if code == grpc.StatusCode.CANCELLED
    else "".join(part.capitalize() for part in code.name.split("_"))
    for code in grpc.StatusCode
}


def _code_name(context: grpc.aio.ServicerContext, failed: bool) -> str:
    code = context.code()
    if isinstance(code, grpc.StatusCode):
        return _CODE_NAMES[code]
    if isinstance(code, int):  # grpc.aio may report the raw status number
        return next((n for c, n in _CODE_NAMES.items() if c.value[0] == code), "Unknown")
    return "Unknown" if failed else "OK"


def _request_id(context: grpc.aio.ServicerContext) -> str:
    for key, value in context.invocation_metadata() or ():
        if key == "x-request-id" and isinstance(value, str) and value:
            return value[:64]
    return uuid.uuid4().hex[:16]


def _kind(handler: grpc.RpcMethodHandler) -> str:
    client_stream, server_stream = handler.request_streaming, handler.response_streaming
    if client_stream and server_stream:
        return "bidi_stream"
    if client_stream:
        return "client_stream"
    return "server_stream" if server_stream else "unary"


class MetricsInterceptor(WrappingInterceptor):
    """Records started/handled/latency/messages for every RPC, and binds the method and a
    request id (the caller's `x-request-id` metadata, else a new one) to its log records.
    Install it first (outermost) so it sees the status the error boundary sets. A stream
    answered through `context.write` (the health Watch) counts no sent messages."""

    def __init__(self, metrics: ServerMetrics) -> None:
        self.metrics = metrics

    def wrap(self, handler: grpc.RpcMethodHandler, full_method: str) -> grpc.RpcMethodHandler:
        service, method = _split_method(full_method)
        labels = (_kind(handler), service, method)
        m = self.metrics

        async def count_requests(requests: AsyncIterator[Any]) -> AsyncIterator[Any]:
            async for request in requests:
                m.received.labels(*labels).inc()
                yield request

        def begin(request: Any) -> tuple[Any, float]:
            m.started.labels(*labels).inc()
            if handler.request_streaming:
                request = count_requests(request)
            else:
                m.received.labels(*labels).inc()
            return request, time.perf_counter()

        def end(context: grpc.aio.ServicerContext, t0: float, outcome: str) -> None:
            if outcome == "cancelled":
                code = "Canceled" if context.code() in (None, grpc.StatusCode.OK) else None
                code = code or _code_name(context, True)
            else:
                code = _code_name(context, outcome == "failed")
            m.handled.labels(*labels, code).inc()
            m.handling.labels(*labels).observe(time.perf_counter() - t0)

        def wrap(fn: Callable[..., Any]) -> Callable[..., Any]:
            if inspect.isasyncgenfunction(fn):

                async def stream(request: Any, context: grpc.aio.ServicerContext) -> Any:
                    request, t0 = begin(request)
                    outcome = "failed"
                    bound = {"method": method, "request_id": _request_id(context)}
                    responses = fn(request, context)
                    try:
                        while True:
                            # The log context spans each step, never a `yield`: a client that
                            # goes away closes this generator from another asyncio context,
                            # where the context variable's token cannot be reset.
                            with log_context(**bound):
                                try:
                                    response = await anext(responses)
                                except StopAsyncIteration:
                                    break
                            m.sent.labels(*labels).inc()
                            yield response
                        outcome = "ok"
                    except (asyncio.CancelledError, GeneratorExit):
                        outcome = "cancelled"  # the client cancelled or went away
                        raise
                    finally:
                        try:
                            await responses.aclose()
                        finally:
                            end(context, t0, outcome)

                return stream

            async def unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
                request, t0 = begin(request)
                outcome = "failed"
                try:
                    with log_context(method=method, request_id=_request_id(context)):
                        response = await fn(request, context)
                    outcome = "ok"
                except asyncio.CancelledError:
                    outcome = "cancelled"
                    raise
                finally:
                    end(context, t0, outcome)
                if not handler.response_streaming:
                    m.sent.labels(*labels).inc()
                return response

            return unary

        return wrap_handler(handler, wrap)
