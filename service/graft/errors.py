"""Typed domain errors. Domain code raises these; one interceptor maps them to gRPC codes.

Anything else that escapes an RPC is a bug and becomes INTERNAL (logged with its trace).
"""

from __future__ import annotations

from dataclasses import dataclass


class GraftError(Exception):
    """Base of every error a caller should see with its own status code."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


QUOTE_LIMIT = 80


def quote(value: object, limit: int = QUOTE_LIMIT) -> str:
    """`value` (a request's string, a file or member name) as it may appear in a message:
    repr-quoted, at most `limit` characters of it, with an ellipsis and the full length
    when cut. Input can be megabytes; messages and their trailers must stay small."""
    text = value if isinstance(value, str) else str(value)
    if len(text) <= limit:
        return repr(text)
    return f"{text[:limit]!r}… ({len(text)} characters)"


@dataclass(frozen=True)
class FieldViolation:
    """One bad field of a request: its path (e.g. `plan.epochs`) and what is wrong."""

    field: str
    description: str


class InvalidArgument(GraftError):
    """The request itself is wrong; field violations say where."""

    def __init__(self, message: str, violations: list[FieldViolation] | None = None) -> None:
        super().__init__(message)
        self.violations: list[FieldViolation] = list(violations or [])

    @classmethod
    def of(cls, field_path: str, description: str) -> InvalidArgument:
        return cls(f"{field_path}: {description}", [FieldViolation(field_path, description)])


class NotFound(GraftError):
    """A named thing (job, model, version, alias, dataset, backbone) does not exist."""


class AlreadyExists(GraftError):
    """A thing to create exists already."""


@dataclass(frozen=True)
class PreconditionViolation:
    """One unmet precondition (google.rpc.PreconditionFailure.Violation): its `type` (a
    code, e.g. "NOT_WORSE"), the `subject` it concerns and what is wrong."""

    type: str
    subject: str
    description: str


class FailedPrecondition(GraftError):
    """The request is valid but the system is not in a state to serve it (missing weights,
    a dataset with one class, a job that has already ended); `violations`, when given,
    travel as a google.rpc.PreconditionFailure detail."""

    def __init__(self, message: str, violations: list[PreconditionViolation] | None = None) -> None:
        super().__init__(message)
        self.violations: list[PreconditionViolation] = list(violations or [])


class ResourceExhausted(GraftError):
    """A size or count limit was exceeded. `retry_after` (seconds, 0 = not said) is set when
    the limit is load, not size: trying again after that long may succeed."""

    def __init__(self, message: str, retry_after: float = 0.0) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class Unavailable(GraftError):
    """The service is draining or a dependency is unreachable; retrying later may work."""


class Cancelled(GraftError):
    """The work was cancelled (by its caller, or because the caller's deadline passed)."""


class DeadlineExceeded(GraftError):
    """The caller's deadline passed before the work could be done (Predict: while its
    images waited in the batch queue)."""


class Unauthenticated(GraftError):
    """The call carries no valid credentials (no API key, an unknown or a revoked one)."""


_KINDS: dict[str, type[GraftError]] = {
    cls.__name__: cls
    for cls in (
        InvalidArgument,
        NotFound,
        AlreadyExists,
        FailedPrecondition,
        ResourceExhausted,
        Unavailable,
        Cancelled,
        DeadlineExceeded,
        Unauthenticated,
    )
}


def error_to_dict(exc: GraftError) -> dict[str, object]:
    """A typed error as JSON-able data, so a worker can hand it to the API through the store
    with its kind and field violations intact (`error_from_dict` rebuilds it)."""
    # A subclass (e.g. graft.artifacts.CorruptArtifact) travels as the kind it refines.
    kind = next((c.__name__ for c in type(exc).__mro__ if c.__name__ in _KINDS), "GraftError")
    out: dict[str, object] = {"kind": kind, "message": exc.message}
    if isinstance(exc, InvalidArgument):
        out["violations"] = [[v.field, v.description] for v in exc.violations]
    if isinstance(exc, FailedPrecondition) and exc.violations:
        out["preconditions"] = [[v.type, v.subject, v.description] for v in exc.violations]
    return out


def error_from_dict(d: dict[str, object]) -> GraftError:
    """The error `error_to_dict` described (an unknown kind: a plain GraftError)."""
    message = str(d.get("message", ""))
    cls = _KINDS.get(str(d.get("kind", "")), GraftError)
    if cls is InvalidArgument:
        raw = d.get("violations") or []
        assert isinstance(raw, list)
        return InvalidArgument(message, [FieldViolation(str(f), str(x)) for f, x in raw])
    if cls is FailedPrecondition:
        found = d.get("preconditions") or []
        assert isinstance(found, list)
        return FailedPrecondition(
            message, [PreconditionViolation(str(t), str(s), str(x)) for t, s, x in found]
        )
    return cls(message)
