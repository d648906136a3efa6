"""Jobs and their leases (their progress events: `events`)."""

from __future__ import annotations

import sqlite3
import uuid
from collections.abc import Sequence
from typing import Any

from graft.domain import (
    DEFAULT_TENANT,
    DatasetRef,
    EvaluationMetrics,
    EventKind,
    Job,
    JobState,
    ProgressEvent,
    TrainingPlan,
)
from graft.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
    quote,
)
from graft.store.codec import (
    JOB_COLUMNS,
    dumps,
    event_to_json,
    job_from_row,
    metrics_to_json,
    request_digest,
    state_event,
)
from graft.store.sqlite.base import _IN_CHUNK, SqliteBase, _filters
from graft.store.sqlite.events import append_event_row


class JobsMixin(SqliteBase):
    """Jobs and their leases; every change of state appends its event (`events`)."""

    @staticmethod
    def _get(c: sqlite3.Connection, job_id: str, tenant: str | None = None) -> Job:
        row = c.execute(f"SELECT {JOB_COLUMNS} FROM jobs WHERE job_id = ?", (job_id,)).fetchone()
        if row is None or (tenant is not None and job_from_row(row).tenant != tenant):
            raise NotFound(f"job {job_id!r} not found")  # the same words for both: no leak
        return job_from_row(row)

    def _end(
        self,
        c: sqlite3.Connection,
        job_id: str,
        state: JobState,
        now: float,
        message: str,
        *,
        error: str = "",
        error_detail: dict[str, Any] | None = None,
        model_version: int = 0,
        metrics: EvaluationMetrics | None = None,
    ) -> None:
        """Move a job to terminal `state` and append its final STATE event."""
        c.execute(
            "UPDATE jobs SET state = ?, end_time = ?, error = ?, error_json = ?,"
            " model_version = ?, metrics_json = ?, lease_expires = 0 WHERE job_id = ?",
            (
                int(state),
                now,
                error,
                dumps(error_detail) if error_detail else "",
                model_version,
                metrics_to_json(metrics),
                job_id,
            ),
        )
        append_event_row(c, job_id, state_event(state, message, metrics), now)

    def create_job(
        self,
        *,
        model_name: str,
        dataset: DatasetRef,
        plan: TrainingPlan,
        request_id: str,
        config_json: str = "",
        advise_first: bool = False,
        plan_resolved: bool = True,
        max_active: int = 0,
        tenant: str = DEFAULT_TENANT,
    ) -> tuple[Job, bool]:
        now = self._clock()
        digest = request_digest(model_name, dataset, plan, advise_first) if request_id else ""
        with self._tx(write=True) as c:
            if request_id:
                row = c.execute(
                    f"SELECT {JOB_COLUMNS}, request_hash FROM jobs"
                    " WHERE tenant = ? AND request_id = ?",
                    (tenant, request_id),
                ).fetchone()
                if row is not None:
                    if row[-1] and row[-1] != digest:
                        raise AlreadyExists(
                            f"request_id {quote(request_id)} was used for another request "
                            f"(job {row[0]}: model {row[1]!r}); a retry must send the same "
                            "model, dataset and plan, or a new request_id"
                        )
                    return job_from_row(row[:-1]), False
            if max_active:
                (active,) = c.execute(
                    "SELECT COUNT(*) FROM jobs WHERE model_name = ? AND tenant = ?"
                    " AND state IN (?, ?)",
                    (model_name, tenant, int(JobState.QUEUED), int(JobState.RUNNING)),
                ).fetchone()
                if active >= max_active:
                    raise ResourceExhausted(
                        f"model {model_name!r} has {active} jobs queued or running, the most"
                        f" allowed ({max_active}); wait for one to end or cancel one",
                        retry_after=30.0,
                    )
            job_id = uuid.uuid4().hex
            c.execute(
                "INSERT INTO jobs (job_id, model_name, dataset_uri, dataset_id, plan_json,"
                " request_id, config_json, state, create_time, advise_first, plan_resolved,"
                " tenant, request_hash) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    job_id,
                    model_name,
                    dataset.uri,
                    dataset.dataset_id,
                    dumps(plan.to_dict()),
                    request_id,
                    config_json,
                    int(JobState.QUEUED),
                    now,
                    int(advise_first),
                    int(plan_resolved),
                    tenant,
                    digest,
                ),
            )
            append_event_row(c, job_id, state_event(JobState.QUEUED, "queued"), now)
            return self._get(c, job_id), True

    def get_job(self, job_id: str, tenant: str | None = None) -> Job:
        with self._tx(write=False) as c:
            return self._get(c, job_id, tenant)

    def get_job_config(self, job_id: str) -> str:
        with self._tx(write=False) as c:
            row = c.execute("SELECT config_json FROM jobs WHERE job_id = ?", (job_id,)).fetchone()
        if row is None:
            raise NotFound(f"job {job_id!r} not found")
        return str(row[0])

    def list_jobs(
        self, state: JobState | None = None, limit: int = 100, tenant: str | None = None
    ) -> list[Job]:
        return self.list_jobs_page(state, limit, tenant)[0]

    def list_jobs_page(
        self,
        state: JobState | None = None,
        limit: int = 100,
        tenant: str | None = None,
        before: int = 0,
    ) -> tuple[list[Job], int]:
        # Keyset paging on the insertion order (seq): a page is one index range scan, and
        # jobs created meanwhile never shift the pages after the first.
        where, args = _filters(("state", None if state is None else int(state)), ("tenant", tenant))
        if before:
            where += (" AND" if where else " WHERE") + " seq < ?"
            args = (*args, before)
        with self._tx(write=False) as c:
            rows = c.execute(
                f"SELECT {JOB_COLUMNS}, seq FROM jobs{where} ORDER BY seq DESC LIMIT ?",
                (*args, limit + 1),
            ).fetchall()
        more = len(rows) > limit
        rows = rows[:limit]
        return [job_from_row(r[:-1]) for r in rows], (rows[-1][-1] if more else 0)

    def claim_job(self, worker_id: str, lease_seconds: float) -> Job | None:
        now = self._clock()
        with self._tx(write=True) as c:
            while True:
                # Oldest first across both kinds; an interrupted job is older than anything
                # queued after it, so resumes go before fresh starts.
                row = c.execute(
                    "SELECT job_id, state, cancel_requested, lease_owner, attempts FROM jobs"
                    " WHERE state = ? OR (state = ? AND lease_expires <= ?)"
                    " ORDER BY seq LIMIT 1",
                    (int(JobState.QUEUED), int(JobState.RUNNING), now),
                ).fetchone()
                if row is None:
                    return None
                job_id, state, cancel_requested, previous_owner, attempts = row
                if cancel_requested:
                    # Its worker died before it could stop the job: finish the cancel.
                    self._end(
                        c,
                        job_id,
                        JobState.CANCELLED,
                        now,
                        f"cancelled: the lease of worker {previous_owner} expired while the"
                        " cancel was pending",
                    )
                    continue
                attempts += 1
                c.execute(
                    "UPDATE jobs SET state = ?, lease_owner = ?, lease_expires = ?, attempts = ?,"
                    " start_time = COALESCE(start_time, ?) WHERE job_id = ?",
                    (int(JobState.RUNNING), worker_id, now + lease_seconds, attempts, now, job_id),
                )
                message = f"claimed by worker {worker_id} (attempt {attempts})"
                if state == JobState.RUNNING:
                    message += f" after the lease of worker {previous_owner} expired"
                append_event_row(c, job_id, state_event(JobState.RUNNING, message), now)
                return self._get(c, job_id)

    def renew_lease(self, job_id: str, worker_id: str, lease_seconds: float) -> bool:
        now = self._clock()
        with self._tx(write=True) as c:
            # Still ours if nobody reclaimed it, even if it lapsed a moment ago.
            cur = c.execute(
                "UPDATE jobs SET lease_expires = ? WHERE job_id = ? AND state = ?"
                " AND lease_owner = ?",
                (now + lease_seconds, job_id, int(JobState.RUNNING), worker_id),
            )
            return cur.rowcount == 1

    def request_cancel(self, job_id: str, tenant: str | None = None) -> Job:
        now = self._clock()
        with self._tx(write=True) as c:
            job = self._get(c, job_id, tenant)
            if job.state.terminal:
                raise FailedPrecondition(
                    f"job {job_id} has already ended ({job.state.name.lower()})"
                )
            if job.state == JobState.QUEUED:
                self._end(c, job_id, JobState.CANCELLED, now, "cancelled before it started")
            elif not job.cancel_requested:
                c.execute("UPDATE jobs SET cancel_requested = 1 WHERE job_id = ?", (job_id,))
                message = f"cancel requested; worker {job.lease_owner} will stop the job"
                payload = event_to_json(
                    ProgressEvent(kind=EventKind.MESSAGE, state=job.state, message=message)
                )
                append_event_row(c, job_id, payload, now)
            return self._get(c, job_id)

    def finish_job(
        self,
        job_id: str,
        worker_id: str,
        state: JobState,
        *,
        error: str = "",
        error_detail: dict[str, Any] | None = None,
        model_version: int = 0,
        metrics: EvaluationMetrics | None = None,
    ) -> Job:
        if not state.terminal:
            raise InvalidArgument.of("state", f"{state.name} is not a terminal state")
        now = self._clock()
        with self._tx(write=True) as c:
            job = self._held(c, job_id, worker_id)
            if state == JobState.SUCCEEDED:
                message = "succeeded"
                if model_version:
                    message += f"; registered {job.model_name} version {model_version}"
            elif state == JobState.FAILED:
                message = f"failed: {error}" if error else "failed"
            else:
                message = "cancelled" + (" on request" if job.cancel_requested else "")
            self._end(
                c,
                job_id,
                state,
                now,
                message,
                error=error,
                error_detail=error_detail,
                model_version=model_version,
                metrics=metrics,
            )
            return self._get(c, job_id)

    def release_job(self, job_id: str, worker_id: str, reason: str) -> Job:
        now = self._clock()
        with self._tx(write=True) as c:
            self._held(c, job_id, worker_id)
            c.execute(
                "UPDATE jobs SET state = ?, lease_owner = '', lease_expires = 0 WHERE job_id = ?",
                (int(JobState.QUEUED), job_id),
            )
            message = f"released by worker {worker_id}: {reason}" if reason else "released"
            append_event_row(c, job_id, state_event(JobState.QUEUED, message), now)
            return self._get(c, job_id)

    def set_skipped_files(self, job_id: str, n: int) -> None:
        with self._tx(write=True) as c:
            cur = c.execute("UPDATE jobs SET skipped_files = ? WHERE job_id = ?", (n, job_id))
            if cur.rowcount == 0:
                raise NotFound(f"job {job_id!r} not found")

    def set_job_plan(self, job_id: str, worker_id: str, plan: TrainingPlan) -> Job:
        with self._tx(write=True) as c:
            job = self._held(c, job_id, worker_id)
            c.execute(
                "UPDATE jobs SET plan_json = ?, plan_resolved = 1 WHERE job_id = ?",
                (dumps(plan.to_dict()), job.job_id),
            )
            return self._get(c, job_id)

    def _held(self, c: sqlite3.Connection, job_id: str, worker_id: str) -> Job:
        job = self._get(c, job_id)
        if job.state != JobState.RUNNING or job.lease_owner != worker_id:
            holder = job.lease_owner if job.state == JobState.RUNNING else ""
            raise FailedPrecondition(
                f"worker {worker_id} does not hold job {job_id} (it is "
                f"{job.state.name.lower()}, leased to {holder or 'nobody'})"
            )
        return job

    def job_progress(self, job_ids: Sequence[str]) -> dict[str, tuple[int, JobState]]:
        out: dict[str, tuple[int, JobState]] = {}
        ids = list(dict.fromkeys(job_ids))
        with self._tx(write=False) as c:
            for lo in range(0, len(ids), _IN_CHUNK):
                part = ids[lo : lo + _IN_CHUNK]
                marks = ",".join("?" * len(part))
                for job_id, last, state in c.execute(
                    f"SELECT job_id, last_sequence, state FROM jobs WHERE job_id IN ({marks})",
                    part,
                ):
                    out[job_id] = (last, JobState(state))
        return out

    def queue_depth(self) -> int:
        with self._tx(write=False) as c:
            (n,) = c.execute(
                "SELECT COUNT(*) FROM jobs WHERE state = ?", (int(JobState.QUEUED),)
            ).fetchone()
        return int(n)

    def oldest_queued_age(self, now: float) -> float:
        with self._tx(write=False) as c:
            (oldest,) = c.execute(
                "SELECT MIN(create_time) FROM jobs WHERE state = ?", (int(JobState.QUEUED),)
            ).fetchone()
        return 0.0 if oldest is None else max(0.0, now - oldest)

    def count_jobs_by_state(self) -> dict[JobState, int]:
        counts: dict[JobState, int] = {s: 0 for s in JobState if s != JobState.UNSPECIFIED}
        with self._tx(write=False) as c:
            for state, n in c.execute("SELECT state, COUNT(*) FROM jobs GROUP BY state"):
                counts[JobState(state)] = n
        return counts
