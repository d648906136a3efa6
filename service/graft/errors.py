"""Typed domain errors. Domain code raises these; one interceptor maps them to gRPC codes.

Anything else that escapes an RPC is a bug and becomes INTERNAL (logged with its trace).
"""

from __future__ import annotations

from dataclasses import dataclass, field


class GraftError(Exception):
    """Base of every error a caller should see with its own status code."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


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


class FailedPrecondition(GraftError):
    """The request is valid but the system is not in a state to serve it (missing weights,
    a dataset with one class, a job that has already ended)."""


class ResourceExhausted(GraftError):
    """A size or count limit was exceeded."""


class Unavailable(GraftError):
    """The service is draining or a dependency is unreachable; retrying later may work."""


@dataclass
class ErrorReport:
    """What a worker records about a failed job."""

    message: str
    details: list[str] = field(default_factory=list)
