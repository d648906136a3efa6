"""`TaskStore`: tasks, the short work the API awaits (Advise, upload checks)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

from graft.domain import JobState, Task, TaskKind


@runtime_checkable
class TaskStore(Protocol):
    """Tasks: short work the API awaits (Advise, upload checks)."""

    def create_task(self, kind: TaskKind, request: dict[str, Any], deadline: float = 0.0) -> Task:
        """Queue a task (QUEUED). `deadline`: epoch seconds after which nobody waits for it
        (0 = none). Ended tasks older than an hour are deleted on the way."""
        ...

    def get_task(self, task_id: str) -> Task:
        """The task, or NotFound."""
        ...

    def claim_task(
        self, worker_id: str, pid: int, lease_seconds: float, kinds: Sequence[TaskKind]
    ) -> Task | None:
        """Take the oldest QUEUED task of `kinds` (or a RUNNING one whose lease expired),
        leased to `worker_id` (process `pid`). Tasks cancelled or past their deadline are
        ended CANCELLED instead of handed out. None when there is nothing to do."""
        ...

    def renew_task_lease(self, task_id: str, worker_id: str, lease_seconds: float) -> bool:
        """Extend the lease; False when the worker should stop: it no longer holds the task,
        a cancel was requested, or the deadline has passed."""
        ...

    def finish_task(
        self,
        task_id: str,
        worker_id: str,
        state: JobState,
        *,
        result: dict[str, Any] | None = None,
        error_detail: dict[str, Any] | None = None,
    ) -> Task:
        """End a RUNNING task held by `worker_id`. Anyone else: FailedPrecondition."""
        ...

    def cancel_task(self, task_id: str) -> Task:
        """QUEUED: CANCELLED at once. RUNNING: `cancel_requested` (its worker stops).
        Ended: unchanged."""
        ...

    def task_states(self, task_ids: Sequence[str]) -> dict[str, JobState]:
        """The state of each known task of `task_ids`, in one read."""
        ...

    def count_tasks(self, kind: TaskKind, states: Sequence[JobState]) -> int:
        """Tasks of `kind` in any of `states`."""
        ...
