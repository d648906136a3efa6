"""Progress events: each job's append-only log, numbered 1, 2, … without gap or duplicate.

`append_event_row` is the one way a row gets in, inside the caller's write transaction:
the jobs part appends its STATE events with it, `EventsMixin.append_event` the workers'.
"""

from __future__ import annotations

import dataclasses
import sqlite3

from graft.domain import JobState, ProgressEvent
from graft.errors import FailedPrecondition, NotFound
from graft.store.codec import event_from_row, event_to_json
from graft.store.sqlite.base import SqliteBase


def append_event_row(c: sqlite3.Connection, job_id: str, payload_json: str, now: float) -> int:
    """Append one event inside the caller's write transaction; returns its sequence.

    The write lock is held (BEGIN IMMEDIATE), so no other connection can read the same
    last_sequence before this one commits: sequences have no gap and no duplicate. The
    events primary key (job_id, sequence) would reject a duplicate anyway."""
    (last,) = c.execute("SELECT last_sequence FROM jobs WHERE job_id = ?", (job_id,)).fetchone()
    sequence = last + 1
    c.execute(
        "INSERT INTO events (job_id, sequence, time, payload_json) VALUES (?, ?, ?, ?)",
        (job_id, sequence, now, payload_json),
    )
    c.execute("UPDATE jobs SET last_sequence = ? WHERE job_id = ?", (sequence, job_id))
    return sequence


class EventsMixin(SqliteBase):
    """Progress events: appended by workers while a job runs, read by its followers."""

    def append_event(self, job_id: str, event: ProgressEvent) -> ProgressEvent:
        now = self._clock()
        with self._tx(write=True) as c:
            row = c.execute("SELECT state FROM jobs WHERE job_id = ?", (job_id,)).fetchone()
            if row is None:
                raise NotFound(f"job {job_id!r} not found")
            state = JobState(row[0])
            if state.terminal:
                raise FailedPrecondition(
                    f"job {job_id} has ended ({state.name.lower()}); its log is closed"
                )
            if event.state == JobState.UNSPECIFIED:
                event = dataclasses.replace(event, state=state)
            sequence = append_event_row(c, job_id, event_to_json(event), now)
        return dataclasses.replace(event, sequence=sequence, job_id=job_id, time=now)

    def events_after(
        self, job_id: str, after_sequence: int, limit: int = 1000
    ) -> list[ProgressEvent]:
        with self._tx(write=False) as c:
            rows = c.execute(
                "SELECT job_id, sequence, time, payload_json FROM events"
                " WHERE job_id = ? AND sequence > ? ORDER BY sequence LIMIT ?",
                (job_id, after_sequence, limit),
            ).fetchall()
        return [event_from_row(r) for r in rows]
