"""The one error boundary: typed domain errors → specific gRPC status codes with rich
details (google.rpc.BadRequest for INVALID_ARGUMENT); the truly unexpected → INTERNAL
with an id to find the logged trace, never the trace itself."""

from __future__ import annotations

import functools
import logging
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import grpc
from google.protobuf import any_pb2
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
    return status


def _abort(context: grpc.ServicerContext, exc: BaseException, method: str) -> None:
    if isinstance(exc, errors.GraftError):
        context.abort_with_status(rpc_status.to_status(to_rpc_status(exc)))
    incident = uuid.uuid4().hex[:12]
    log.exception("unexpected error in %s (incident %s)", method, incident, exc_info=exc)
    context.abort(grpc.StatusCode.INTERNAL, f"internal error (incident {incident}); see server log")


def _aborted_already(context: grpc.ServicerContext) -> bool:
    # context.abort() raises a bare Exception after setting the code: let that one through.
    code = context.code()
    return code is not None and code != grpc.StatusCode.OK


def guard_unary(method: str, fn: Callable[[Any, grpc.ServicerContext], Any]) -> Callable[..., Any]:
    @functools.wraps(fn)
    def wrapper(request: Any, context: grpc.ServicerContext) -> Any:
        try:
            return fn(request, context)
        except Exception as exc:
            if _aborted_already(context):
                raise
            _abort(context, exc, method)
            raise

    return wrapper


def guard_stream(
    method: str, fn: Callable[[Any, grpc.ServicerContext], Iterator[Any]]
) -> Callable[..., Iterator[Any]]:
    @functools.wraps(fn)
    def wrapper(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
        try:
            yield from fn(request, context)
        except Exception as exc:
            if _aborted_already(context):
                raise
            _abort(context, exc, method)
            raise

    return wrapper


class WrappingInterceptor(grpc.ServerInterceptor):
    """A server interceptor that wraps each RPC's handler: subclasses define `wrap`."""

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler = continuation(handler_call_details)
        return None if handler is None else self.wrap(handler, handler_call_details.method)

    def wrap(self, handler: grpc.RpcMethodHandler, method: str) -> grpc.RpcMethodHandler:
        """`handler` of `method` ("/package.Service/Method"), wrapped (see wrap_handler)."""
        raise NotImplementedError


class ErrorBoundaryInterceptor(WrappingInterceptor):
    """Wraps every handler of the server with the error mapping above."""

    def wrap(self, handler: grpc.RpcMethodHandler, method: str) -> grpc.RpcMethodHandler:
        return wrap_handler(
            handler,
            unary_response=lambda fn, _streaming_request: guard_unary(method, fn),
            stream_response=lambda fn, _streaming_request: guard_stream(method, fn),
        )


Wrap = Callable[[Callable[..., Any], bool], Callable[..., Any]]


def wrap_handler(
    handler: grpc.RpcMethodHandler, *, unary_response: Wrap, stream_response: Wrap
) -> grpc.RpcMethodHandler:
    """`handler` with its behaviour function wrapped: `unary_response(fn, streaming_request)`
    for RPCs that answer once, `stream_response(fn, streaming_request)` for those that
    stream their answer. Serializers are kept. Shared by the server's interceptors."""
    kwargs = {
        "request_deserializer": handler.request_deserializer,
        "response_serializer": handler.response_serializer,
    }
    if handler.unary_unary:
        return grpc.unary_unary_rpc_method_handler(
            unary_response(handler.unary_unary, False), **kwargs
        )
    if handler.stream_unary:
        return grpc.stream_unary_rpc_method_handler(
            unary_response(handler.stream_unary, True), **kwargs
        )
    if handler.unary_stream:
        return grpc.unary_stream_rpc_method_handler(
            stream_response(handler.unary_stream, False), **kwargs
        )
    if handler.stream_stream:
        return grpc.stream_stream_rpc_method_handler(
            stream_response(handler.stream_stream, True), **kwargs
        )
    return handler
