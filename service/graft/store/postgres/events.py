"""Progress events: each job's append-only log, numbered 1, 2, … without gap or duplicate.

`append_event_row` is the one way a row gets in, inside the caller's transaction: the jobs
part appends its STATE events with it, `EventsMixin.append_event` the workers'.
"""

from __future__ import annotations

import dataclasses

from graft.domain import JobState, ProgressEvent
from graft.errors import FailedPrecondition, NotFound
from graft.store.codec import event_from_row, event_to_json
from graft.store.postgres.base import Conn, PostgresBase


def append_event_row(c: Conn, job_id: str, payload_json: str) -> tuple[int, float]:
    """Append one event inside the caller's transaction; returns its sequence and time.

    The UPDATE of the job's last_sequence locks the job's row until the transaction ends,
    so appends to one job queue up (from any process) and each reads the sequence the
    previous one committed: no gap, no duplicate. The events primary key (job_id,
    sequence) would reject a duplicate anyway. Listeners hear of it at commit."""
    row = c.execute(
        "UPDATE jobs SET last_sequence = last_sequence + 1 WHERE job_id = %s"
        " RETURNING last_sequence",
        (job_id,),
    ).fetchone()
    assert row is not None, "the caller has checked that the job exists"
    sequence = int(row[0])
    written = c.execute(
        "INSERT INTO events (job_id, sequence, time, payload_json)"
        " VALUES (%s, %s, graft_now(), %s) RETURNING time",
        (job_id, sequence, payload_json),
    ).fetchone()
    assert written is not None
    PostgresBase._notify(c, job_id)
    return sequence, float(written[0])


class EventsMixin(PostgresBase):
    """Progress events: appended by workers while a job runs, read by its followers."""

    def append_event(self, job_id: str, event: ProgressEvent) -> ProgressEvent:
        with self._tx() as c:
            row = c.execute(
                "SELECT state FROM jobs WHERE job_id = %s FOR NO KEY UPDATE", (job_id,)
            ).fetchone()
            if row is None:
                raise NotFound(f"job {job_id!r} not found")
            state = JobState(row[0])
            if state.terminal:
                raise FailedPrecondition(
                    f"job {job_id} has ended ({state.name.lower()}); its log is closed"
                )
            if event.state == JobState.UNSPECIFIED:
                event = dataclasses.replace(event, state=state)
            sequence, now = append_event_row(c, job_id, event_to_json(event))
        return dataclasses.replace(event, sequence=sequence, job_id=job_id, time=now)

    def events_after(
        self, job_id: str, after_sequence: int, limit: int = 1000
    ) -> list[ProgressEvent]:
        with self._tx() as c:
            rows = c.execute(
                "SELECT job_id, sequence, time, payload_json FROM events"
                " WHERE job_id = %s AND sequence > %s ORDER BY sequence LIMIT %s",
                (job_id, after_sequence, limit),
            ).fetchall()
        return [event_from_row(r) for r in rows]
