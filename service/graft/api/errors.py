"""The one error boundary: typed domain errors → specific gRPC status codes with rich
details (google.rpc.BadRequest for INVALID_ARGUMENT, google.rpc.PreconditionFailure when a
FAILED_PRECONDITION names its violations, google.rpc.RetryInfo when a load limit says when
to retry); the truly unexpected → INTERNAL with an id to find the logged trace,
never the trace itself.

The server is `grpc.aio`: every handler is a coroutine function (unary responses, and
streams written with `context.write`) or an async generator function (streamed responses).
`wrap_handler` wraps either kind and keeps it that kind, which is how grpc.aio tells them
apart."""

from __future__ import annotations

import functools
import inspect
import logging
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from graft import errors

log = logging.getLogger(__name__)

_CODES: list[tuple[type[errors.GraftError], int]] = [
    (errors.InvalidArgument, code_pb2.INVALID_ARGUMENT),
    (errors.NotFound, code_pb2.NOT_FOUND),
    (errors.AlreadyExists, code_pb2.ALREADY_EXISTS),
    (errors.FailedPrecondition, code_pb2.FAILED_PRECONDITION),
    (errors.ResourceExhausted, code_pb2.RESOURCE_EXHAUSTED),
    (errors.Unavailable, code_pb2.UNAVAILABLE),
    (errors.Cancelled, code_pb2.CANCELLED),
    (errors.DeadlineExceeded, code_pb2.DEADLINE_EXCEEDED),
    (errors.Unauthenticated, code_pb2.UNAUTHENTICATED),
]


def to_rpc_status(exc: errors.GraftError) -> status_pb2.Status:
    """The google.rpc.Status a domain error stands for (also used per image in Predict)."""
    code = next((c for cls, c in _CODES if isinstance(exc, cls)), code_pb2.UNKNOWN)
    status = status_pb2.Status(code=code, message=exc.message)
    if isinstance(exc, errors.InvalidArgument) and exc.violations:
        detail = any_pb2.Any()
        detail.Pack(
            error_details_pb2.BadRequest(
                field_violations=[
                    error_details_pb2.BadRequest.FieldViolation(
                        field=v.field, description=v.description
                    )
                    for v in exc.violations
                ]
            )
        )
        status.details.append(detail)
    if isinstance(exc, errors.FailedPrecondition) and exc.violations:
        detail = any_pb2.Any()
        detail.Pack(
            error_details_pb2.PreconditionFailure(
                violations=[
                    error_details_pb2.PreconditionFailure.Violation(
                        type=v.type, subject=v.subject, description=v.description
                    )
                    for v in exc.violations
                ]
            )
        )
        status.details.append(detail)
    if isinstance(exc, errors.ResourceExhausted) and exc.retry_after > 0:
        detail = any_pb2.Any()
        delay = duration_pb2.Duration()
        delay.FromMilliseconds(max(1, round(exc.retry_after * 1000)))
        detail.Pack(error_details_pb2.RetryInfo(retry_delay=delay))
        status.details.append(detail)
    return status


async def _abort(context: grpc.aio.ServicerContext, exc: BaseException, method: str) -> None:
    if isinstance(exc, errors.GraftError):
        status = rpc_status.to_status(to_rpc_status(exc))
        await context.abort(status.code, status.details, status.trailing_metadata)
    incident = uuid.uuid4().hex[:12]
    log.exception("unexpected error in %s (incident %s)", method, incident, exc_info=exc)
    await context.abort(
        grpc.StatusCode.INTERNAL, f"internal error (incident {incident}); see server log"
    )


def _aborted_already(exc: BaseException) -> bool:
    # context.abort() raises AbortError after setting the status: let that one through.
    return isinstance(exc, grpc.aio.AbortError)


Behaviour = Callable[..., Any]


def guard(method: str, fn: Behaviour) -> Behaviour:
    """`fn` with domain errors turned into their status and anything else into INTERNAL."""
    if inspect.isasyncgenfunction(fn):

        @functools.wraps(fn)
        async def stream(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            try:
                async for response in fn(request, context):
                    yield response
            except Exception as exc:
                if _aborted_already(exc):
                    raise
                await _abort(context, exc, method)

        return stream

    @functools.wraps(fn)
    async def unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            return await fn(request, context)
        except Exception as exc:
            if _aborted_already(exc):
                raise
            await _abort(context, exc, method)

    return unary


class WrappingInterceptor(grpc.aio.ServerInterceptor):
    """A server interceptor that wraps each RPC's handler: subclasses define `wrap`."""

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        return self.wrap(handler, handler_call_details.method)

    def wrap(self, handler: grpc.RpcMethodHandler, method: str) -> grpc.RpcMethodHandler:
        """`handler` of `method` ("/package.Service/Method"), wrapped (see wrap_handler)."""
        raise NotImplementedError


class ErrorBoundaryInterceptor(WrappingInterceptor):
    """Wraps every handler of the server with the error mapping above."""

    def wrap(self, handler: grpc.RpcMethodHandler, method: str) -> grpc.RpcMethodHandler:
        return wrap_handler(handler, lambda fn: guard(method, fn))


def wrap_handler(
    handler: grpc.RpcMethodHandler, wrap: Callable[[Behaviour], Behaviour]
) -> grpc.RpcMethodHandler:
    """`handler` with its behaviour function replaced by `wrap(behaviour)`; serializers and
    the RPC's kind are kept. `wrap` must return the same kind of function it is given
    (coroutine function or async generator function). Shared by the server's interceptors."""
    kwargs = {
        "request_deserializer": handler.request_deserializer,
        "response_serializer": handler.response_serializer,
    }
    if handler.unary_unary:
        return grpc.unary_unary_rpc_method_handler(wrap(handler.unary_unary), **kwargs)
    if handler.stream_unary:
        return grpc.stream_unary_rpc_method_handler(wrap(handler.stream_unary), **kwargs)
    if handler.unary_stream:
        return grpc.unary_stream_rpc_method_handler(wrap(handler.unary_stream), **kwargs)
    if handler.stream_stream:
        return grpc.stream_stream_rpc_method_handler(wrap(handler.stream_stream), **kwargs)
    return handler
