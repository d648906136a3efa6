"""Tasks: short work the API awaits (Advise, upload checks)."""

from __future__ import annotations

import sqlite3
import uuid
from collections.abc import Sequence
from typing import Any

from graft.domain import JobState, Task, TaskKind
from graft.errors import FailedPrecondition, InvalidArgument, NotFound
from graft.store.codec import TASK_COLUMNS, dumps, task_from_row
from graft.store.sqlite.base import _IN_CHUNK, SqliteBase

# Ended tasks are kept this long (for a caller that polls once more), then deleted.
TASK_RETENTION_SECONDS = 3600.0


class TasksMixin(SqliteBase):
    """Tasks: short work the API awaits (Advise, upload checks)."""

    @staticmethod
    def _get_task(c: sqlite3.Connection, task_id: str) -> Task:
        row = c.execute(
            f"SELECT {TASK_COLUMNS} FROM tasks WHERE task_id = ?", (task_id,)
        ).fetchone()
        if row is None:
            raise NotFound(f"task {task_id!r} not found")
        return task_from_row(row)

    @staticmethod
    def _end_task(
        c: sqlite3.Connection,
        task_id: str,
        state: JobState,
        now: float,
        result: dict[str, Any] | None = None,
        error_detail: dict[str, Any] | None = None,
    ) -> None:
        c.execute(
            "UPDATE tasks SET state = ?, end_time = ?, result_json = ?, error_json = ?,"
            " lease_expires = 0 WHERE task_id = ?",
            (
                int(state),
                now,
                dumps(result) if result else "",
                dumps(error_detail) if error_detail else "",
                task_id,
            ),
        )

    def create_task(self, kind: TaskKind, request: dict[str, Any], deadline: float = 0.0) -> Task:
        now = self._clock()
        task_id = uuid.uuid4().hex
        with self._tx(write=True) as c:
            c.execute(
                "DELETE FROM tasks WHERE state IN (?, ?, ?) AND end_time < ?",
                (
                    int(JobState.SUCCEEDED),
                    int(JobState.FAILED),
                    int(JobState.CANCELLED),
                    now - TASK_RETENTION_SECONDS,
                ),
            )
            c.execute(
                "INSERT INTO tasks (task_id, kind, state, request_json, create_time, deadline)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (task_id, int(kind), int(JobState.QUEUED), dumps(request), now, deadline),
            )
            return self._get_task(c, task_id)

    def get_task(self, task_id: str) -> Task:
        with self._tx(write=False) as c:
            return self._get_task(c, task_id)

    def claim_task(
        self, worker_id: str, pid: int, lease_seconds: float, kinds: Sequence[TaskKind]
    ) -> Task | None:
        now = self._clock()
        kind_marks = ",".join("?" * len(kinds))
        with self._tx(write=True) as c:
            while True:
                row = c.execute(
                    "SELECT task_id, cancel_requested, deadline FROM tasks"
                    f" WHERE kind IN ({kind_marks})"
                    " AND (state = ? OR (state = ? AND lease_expires <= ?))"
                    " ORDER BY seq LIMIT 1",
                    (*(int(k) for k in kinds), int(JobState.QUEUED), int(JobState.RUNNING), now),
                ).fetchone()
                if row is None:
                    return None
                task_id, cancel_requested, deadline = row
                if cancel_requested or (deadline and deadline <= now):
                    # Nobody waits for it any more: abandon it rather than start it.
                    self._end_task(c, task_id, JobState.CANCELLED, now)
                    continue
                c.execute(
                    "UPDATE tasks SET state = ?, lease_owner = ?, lease_expires = ?,"
                    " worker_pid = ?, start_time = COALESCE(start_time, ?) WHERE task_id = ?",
                    (int(JobState.RUNNING), worker_id, now + lease_seconds, pid, now, task_id),
                )
                return self._get_task(c, task_id)

    def renew_task_lease(self, task_id: str, worker_id: str, lease_seconds: float) -> bool:
        now = self._clock()
        with self._tx(write=True) as c:
            cur = c.execute(
                "UPDATE tasks SET lease_expires = ? WHERE task_id = ? AND state = ?"
                " AND lease_owner = ? AND cancel_requested = 0 AND (deadline = 0 OR deadline > ?)",
                (now + lease_seconds, task_id, int(JobState.RUNNING), worker_id, now),
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
        now = self._clock()
        with self._tx(write=True) as c:
            task = self._get_task(c, task_id)
            if task.state != JobState.RUNNING or task.lease_owner != worker_id:
                raise FailedPrecondition(
                    f"worker {worker_id} does not hold task {task_id} (it is "
                    f"{task.state.name.lower()}, leased to {task.lease_owner or 'nobody'})"
                )
            self._end_task(c, task_id, state, now, result, error_detail)
            return self._get_task(c, task_id)

    def cancel_task(self, task_id: str) -> Task:
        now = self._clock()
        with self._tx(write=True) as c:
            task = self._get_task(c, task_id)
            if task.state == JobState.QUEUED:
                self._end_task(c, task_id, JobState.CANCELLED, now)
            elif task.state == JobState.RUNNING:
                c.execute("UPDATE tasks SET cancel_requested = 1 WHERE task_id = ?", (task_id,))
            return self._get_task(c, task_id)

    def task_states(self, task_ids: Sequence[str]) -> dict[str, JobState]:
        out: dict[str, JobState] = {}
        ids = list(dict.fromkeys(task_ids))
        with self._tx(write=False) as c:
            for lo in range(0, len(ids), _IN_CHUNK):
                part = ids[lo : lo + _IN_CHUNK]
                marks = ",".join("?" * len(part))
                for task_id, state in c.execute(
                    f"SELECT task_id, state FROM tasks WHERE task_id IN ({marks})", part
                ):
                    out[task_id] = JobState(state)
        return out

    def count_tasks(self, kind: TaskKind, states: Sequence[JobState]) -> int:
        marks = ",".join("?" * len(states))
        with self._tx(write=False) as c:
            (n,) = c.execute(
                f"SELECT COUNT(*) FROM tasks WHERE kind = ? AND state IN ({marks})",
                (int(kind), *(int(s) for s in states)),
            ).fetchone()
        return int(n)
