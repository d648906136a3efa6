"""`WorkerStore`: what workers report about themselves, and `WorkerInfo`, one report."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable


@dataclass(frozen=True)
class WorkerInfo:
    """What a worker last reported about itself (see `heartbeat_worker`)."""

    worker_id: str
    pid: int
    host: str
    last_heartbeat: float
    info: dict[str, Any] = field(default_factory=dict)


@runtime_checkable
class WorkerStore(Protocol):
    """What workers report about themselves."""

    def heartbeat_worker(self, worker_id: str, pid: int, host: str, info: dict[str, Any]) -> None:
        """Insert or update the worker's row with last_heartbeat = now."""
        ...

    def list_workers(self) -> list[WorkerInfo]:
        """Every worker that ever sent a heartbeat, by worker_id."""
        ...
