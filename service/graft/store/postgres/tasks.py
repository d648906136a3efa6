"""Tasks: short work the API awaits (Advise, upload checks)."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any

from graft.domain import JobState, Task, TaskKind
from graft.errors import FailedPrecondition, InvalidArgument, NotFound
from graft.store.codec import TASK_COLUMNS, dumps, task_from_row
from graft.store.postgres.base import Conn, PostgresBase

# Ended tasks are kept this long (for a caller that polls once more), then deleted.
TASK_RETENTION_SECONDS = 3600.0

_ENDED = [int(JobState.SUCCEEDED), int(JobState.FAILED), int(JobState.CANCELLED)]


class TasksMixin(PostgresBase):
    """Tasks: short work the API awaits (Advise, upload checks). Every change of a task's
    state notifies the listeners (the API's watcher wakes whoever awaits it)."""

    @staticmethod
    def _get_task(c: Conn, task_id: str, *, lock: bool = False) -> Task:
        row = c.execute(
            f"SELECT {TASK_COLUMNS} FROM tasks WHERE task_id = %s"
            + (" FOR NO KEY UPDATE" if lock else ""),
            (task_id,),
        ).fetchone()
        if row is None:
            raise NotFound(f"task {task_id!r} not found")
        return task_from_row(row)

    @classmethod
    def _end_task(
        cls,
        c: Conn,
        task_id: str,
        state: JobState,
        result: dict[str, Any] | None = None,
        error_detail: dict[str, Any] | None = None,
    ) -> None:
        c.execute(
            "UPDATE tasks SET state = %s, end_time = graft_now(), result_json = %s,"
            " error_json = %s, lease_expires = 0 WHERE task_id = %s",
            (
                int(state),
                dumps(result) if result else "",
                dumps(error_detail) if error_detail else "",
                task_id,
            ),
        )
        cls._notify(c, task_id)

    def create_task(self, kind: TaskKind, request: dict[str, Any], deadline: float = 0.0) -> Task:
        task_id = uuid.uuid4().hex
        with self._tx() as c:
            c.execute(
                "DELETE FROM tasks WHERE state = ANY(%s) AND end_time < graft_now() - %s",
                (_ENDED, TASK_RETENTION_SECONDS),
            )
            c.execute(
                "INSERT INTO tasks (task_id, kind, state, request_json, create_time, deadline)"
                " VALUES (%s, %s, %s, %s, graft_now(), %s)",
                (task_id, int(kind), int(JobState.QUEUED), dumps(request), float(deadline)),
            )
            return self._get_task(c, task_id)

    def get_task(self, task_id: str) -> Task:
        with self._tx() as c:
            return self._get_task(c, task_id)

    def claim_task(
        self, worker_id: str, pid: int, lease_seconds: float, kinds: Sequence[TaskKind]
    ) -> Task | None:
        if not kinds:
            return None
        with self._tx() as c:
            while True:
                # SKIP LOCKED, as for jobs: concurrent claims take different tasks.
                row = c.execute(
                    "SELECT task_id, cancel_requested, deadline, graft_now() FROM tasks"
                    " WHERE kind = ANY(%s)"
                    " AND (state = %s OR (state = %s AND lease_expires <= graft_now()))"
                    " ORDER BY seq LIMIT 1 FOR NO KEY UPDATE SKIP LOCKED",
                    ([int(k) for k in kinds], int(JobState.QUEUED), int(JobState.RUNNING)),
                ).fetchone()
                if row is None:
                    return None
                task_id, cancel_requested, deadline, now = row
                if cancel_requested or (deadline and deadline <= now):
                    # Nobody waits for it any more: abandon it rather than start it.
                    self._end_task(c, task_id, JobState.CANCELLED)
                    continue
                c.execute(
                    "UPDATE tasks SET state = %s, lease_owner = %s,"
                    " lease_expires = graft_now() + %s, worker_pid = %s,"
                    " start_time = COALESCE(start_time, graft_now()) WHERE task_id = %s",
                    (int(JobState.RUNNING), worker_id, float(lease_seconds), pid, task_id),
                )
                self._notify(c, task_id)
                return self._get_task(c, task_id)

    def renew_task_lease(self, task_id: str, worker_id: str, lease_seconds: float) -> bool:
        with self._tx() as c:
            cur = c.execute(
                "UPDATE tasks SET lease_expires = graft_now() + %s WHERE task_id = %s"
                " AND state = %s AND lease_owner = %s AND NOT cancel_requested"
                " AND (deadline = 0 OR deadline > graft_now())",
                (float(lease_seconds), task_id, int(JobState.RUNNING), worker_id),
            )
            return cur.rowcount == 1

    def finish_task(
        self,
        task_id: str,
        worker_id: str,
        state: JobState,
        *,
        result: dict[str, Any] | None = None,
        error_detail: dict[str, Any] | None = None,
    ) -> Task:
        if not state.terminal:
            raise InvalidArgument.of("state", f"{state.name} is not a terminal state")
        with self._tx() as c:
            task = self._get_task(c, task_id, lock=True)
            if task.state != JobState.RUNNING or task.lease_owner != worker_id:
                raise FailedPrecondition(
                    f"worker {worker_id} does not hold task {task_id} (it is "
                    f"{task.state.name.lower()}, leased to {task.lease_owner or 'nobody'})"
                )
            self._end_task(c, task_id, state, result, error_detail)
            return self._get_task(c, task_id)

    def cancel_task(self, task_id: str) -> Task:
        with self._tx() as c:
            task = self._get_task(c, task_id, lock=True)
            if task.state == JobState.QUEUED:
                self._end_task(c, task_id, JobState.CANCELLED)
            elif task.state == JobState.RUNNING:
                c.execute("UPDATE tasks SET cancel_requested = true WHERE task_id = %s", (task_id,))
            return self._get_task(c, task_id)

    def task_states(self, task_ids: Sequence[str]) -> dict[str, JobState]:
        ids = list(dict.fromkeys(task_ids))
        if not ids:
            return {}
        with self._tx() as c:
            rows = c.execute(
                "SELECT task_id, state FROM tasks WHERE task_id = ANY(%s)", (ids,)
            ).fetchall()
        return {task_id: JobState(state) for task_id, state in rows}

    def count_tasks(self, kind: TaskKind, states: Sequence[JobState]) -> int:
        if not states:
            return 0
        with self._tx() as c:
            row = c.execute(
                "SELECT COUNT(*) FROM tasks WHERE kind = %s AND state = ANY(%s)",
                (int(kind), [int(s) for s in states]),
            ).fetchone()
        return int(row[0]) if row else 0
