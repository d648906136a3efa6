"""Errors the SDK raises: one class per gRPC status code, with the rich details parsed.

Every SDK method turns a `grpc.RpcError` into a `GraftError` subclass, so callers catch
`graft_client.NotFound` rather than inspecting status codes. The server attaches a
`google.rpc.Status` in the `grpc-status-details-bin` trailer; its details are unpacked
here (`BadRequest` field violations become `field_violations`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import grpc
from google.protobuf import message as _message
from google.rpc import error_details_pb2, status_pb2

__all__ = [
    "Aborted",
    "AlreadyExists",
    "Cancelled",
    "DataLoss",
    "DeadlineExceeded",
    "FailedPrecondition",
    "GraftError",
    "Internal",
    "InvalidArgument",
    "NotFound",
    "OutOfRange",
    "PermissionDenied",
    "ResourceExhausted",
    "Unauthenticated",
    "Unavailable",
    "Unimplemented",
    "Unknown",
    "from_rpc_error",
    "from_status",
    "job_error",
    "parse_status_details",
]

STATUS_DETAILS_KEY = "grpc-status-details-bin"

# Detail messages the server may attach (google/rpc/error_details.proto).
_DETAIL_TYPES: tuple[type[_message.Message], ...] = (
    error_details_pb2.BadRequest,
    error_details_pb2.ErrorInfo,
    error_details_pb2.RetryInfo,
    error_details_pb2.PreconditionFailure,
    error_details_pb2.QuotaFailure,
    error_details_pb2.ResourceInfo,
    error_details_pb2.Help,
    error_details_pb2.LocalizedMessage,
    error_details_pb2.DebugInfo,
    error_details_pb2.RequestInfo,
)


class GraftError(Exception):
    """An RPC failed. `code` is the gRPC status code, `message` the server's text,
    `details` the unpacked google.rpc detail messages, and `field_violations` the
    (field, description) pairs of a BadRequest detail."""

    default_code: grpc.StatusCode = grpc.StatusCode.UNKNOWN

    def __init__(
        self,
        message: str,
        *,
        code: grpc.StatusCode | None = None,
        details: Sequence[_message.Message] = (),
        field_violations: Sequence[tuple[str, str]] = (),
        status: status_pb2.Status | None = None,
    ) -> None:
        super().__init__(message)
        self.code: grpc.StatusCode = code if code is not None else self.default_code
        self.message = message
        self.details: list[_message.Message] = list(details)
        self.field_violations: list[tuple[str, str]] = list(field_violations)
        self.status = status

    def __str__(self) -> str:
        text = f"{self.code.name}: {self.message}"
        for field, description in self.field_violations:
            if f"{field}: {description}" != self.message:  # often the message itself
                text += f"\n  {field}: {description}"
        return text

    def __reduce__(self) -> tuple[Any, ...]:
        # Picklable (e.g. across multiprocessing) without the protobuf status.
        return (_rebuild, (type(self), self.message, self.code.name, self.field_violations))


def _rebuild(
    cls: type[GraftError], message: str, code: str, violations: list[tuple[str, str]]
) -> GraftError:
    return cls(message, code=grpc.StatusCode[code], field_violations=violations)


class Cancelled(GraftError):
    default_code = grpc.StatusCode.CANCELLED


class Unknown(GraftError):
    default_code = grpc.StatusCode.UNKNOWN


class InvalidArgument(GraftError):
    default_code = grpc.StatusCode.INVALID_ARGUMENT


class DeadlineExceeded(GraftError):
    default_code = grpc.StatusCode.DEADLINE_EXCEEDED


class NotFound(GraftError):
    default_code = grpc.StatusCode.NOT_FOUND


class AlreadyExists(GraftError):
    default_code = grpc.StatusCode.ALREADY_EXISTS


class PermissionDenied(GraftError):
    default_code = grpc.StatusCode.PERMISSION_DENIED


class ResourceExhausted(GraftError):
    default_code = grpc.StatusCode.RESOURCE_EXHAUSTED


class FailedPrecondition(GraftError):
    default_code = grpc.StatusCode.FAILED_PRECONDITION


class Aborted(GraftError):
    default_code = grpc.StatusCode.ABORTED


class OutOfRange(GraftError):
    default_code = grpc.StatusCode.OUT_OF_RANGE


class Unimplemented(GraftError):
    default_code = grpc.StatusCode.UNIMPLEMENTED


class Internal(GraftError):
    default_code = grpc.StatusCode.INTERNAL


class Unavailable(GraftError):
    default_code = grpc.StatusCode.UNAVAILABLE


class DataLoss(GraftError):
    default_code = grpc.StatusCode.DATA_LOSS


class Unauthenticated(GraftError):
    default_code = grpc.StatusCode.UNAUTHENTICATED


_BY_CODE: dict[grpc.StatusCode, type[GraftError]] = {
    cls.default_code: cls
    for cls in (
        Cancelled,
        Unknown,
        InvalidArgument,
        DeadlineExceeded,
        NotFound,
        AlreadyExists,
        PermissionDenied,
        ResourceExhausted,
        FailedPrecondition,
        Aborted,
        OutOfRange,
        Unimplemented,
        Internal,
        Unavailable,
        DataLoss,
        Unauthenticated,
    )
}


def error_class(code: grpc.StatusCode) -> type[GraftError]:
    """The GraftError subclass for a status code (GraftError itself for OK)."""
    return _BY_CODE.get(code, GraftError)


def _unpack(status: status_pb2.Status) -> tuple[list[_message.Message], list[tuple[str, str]]]:
    details: list[_message.Message] = []
    violations: list[tuple[str, str]] = []
    for any_detail in status.details:
        unpacked: _message.Message = any_detail
        for detail_type in _DETAIL_TYPES:
            if any_detail.Is(detail_type.DESCRIPTOR):
                candidate = detail_type()
                if any_detail.Unpack(candidate):
                    unpacked = candidate
                break
        details.append(unpacked)
        if isinstance(unpacked, error_details_pb2.BadRequest):
            violations.extend((v.field, v.description) for v in unpacked.field_violations)
    return details, violations


def from_status(status: status_pb2.Status) -> GraftError:
    """The GraftError a google.rpc.Status stands for (as carried by `Job.error_status` and
    `Prediction.error`), its details unpacked."""
    code = next((c for c in grpc.StatusCode if c.value[0] == status.code), None)
    code = code or grpc.StatusCode.UNKNOWN
    details, violations = _unpack(status)
    cls = error_class(code)
    return cls(
        status.message, code=code, details=details, field_violations=violations, status=status
    )


def job_error(job: Any) -> GraftError | None:
    """A failed job's failure as the GraftError it would have raised had the server checked
    it before queueing (`Job.error_status`: e.g. FailedPrecondition for a dataset with one
    class, InvalidArgument with field violations); None when the job has not failed.
    Servers older than this field give a plain GraftError with the job's `error` text."""
    if job.HasField("error_status"):
        return from_status(job.error_status)
    return GraftError(job.error) if job.error else None


def parse_status_details(
    trailing_metadata: Sequence[tuple[str, str | bytes]] | None,
) -> tuple[status_pb2.Status | None, list[_message.Message], list[tuple[str, str]]]:
    """Finds the google.rpc.Status in trailing metadata and unpacks its details.

    Returns (status or None, unpacked detail messages, BadRequest field violations).
    Detail types this SDK does not know stay as `google.protobuf.Any`. A malformed
    trailer is ignored rather than hiding the original error behind a parse error.
    """
    raw: bytes | None = None
    for key, value in trailing_metadata or ():
        if key == STATUS_DETAILS_KEY and isinstance(value, bytes):
            raw = value
            break
    if raw is None:
        return None, [], []
    status = status_pb2.Status()
    try:
        status.ParseFromString(raw)
    except _message.DecodeError:
        return None, [], []
    details, violations = _unpack(status)
    return status, details, violations


def from_rpc_error(error: grpc.RpcError) -> GraftError:
    """Converts a grpc.RpcError (as raised by a stub call or a stream) to a GraftError."""
    code_fn = getattr(error, "code", None)
    code = code_fn() if callable(code_fn) else None
    if not isinstance(code, grpc.StatusCode):
        code = grpc.StatusCode.UNKNOWN
    details_fn = getattr(error, "details", None)
    message = details_fn() if callable(details_fn) else None
    if not isinstance(message, str):
        message = str(error)
    trailers_fn = getattr(error, "trailing_metadata", None)
    trailers = trailers_fn() if callable(trailers_fn) else None
    status, details, violations = parse_status_details(trailers)
    if status is not None and status.message and not message:
        message = status.message
    cls = error_class(code)
    return cls(message, code=code, details=details, field_violations=violations, status=status)
