"""Jobs and their leases (their progress events: `events`)."""

from __future__ import annotations

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
from graft.store.postgres.base import Conn, PostgresBase, _filters
from graft.store.postgres.events import append_event_row

_QUEUED, _RUNNING = int(JobState.QUEUED), int(JobState.RUNNING)


class JobsMixin(PostgresBase):
    """Jobs and their leases; every change of state appends its event (`events`), which
    also notifies the listeners."""

    @staticmethod
    def _get(c: Conn, job_id: str, tenant: str | None = None, *, lock: bool = False) -> Job:
        """The job; `lock`: and its row, until the transaction ends (the writes that read
        the job's state first, so that no other transaction changes it in between)."""
        row = c.execute(
            f"SELECT {JOB_COLUMNS} FROM jobs WHERE job_id = %s"
            + (" FOR NO KEY UPDATE" if lock else ""),
            (job_id,),
        ).fetchone()
        if row is None or (tenant is not None and job_from_row(row).tenant != tenant):
            raise NotFound(f"job {job_id!r} not found")  # the same words for both: no leak
        return job_from_row(row)

    def _end(
        self,
        c: Conn,
        job_id: str,
        state: JobState,
        message: str,
        *,
        error: str = "",
        error_detail: dict[str, Any] | None = None,
        model_version: int = 0,
        metrics: EvaluationMetrics | None = None,
    ) -> None:
        """Move a job to terminal `state` and append its final STATE event."""
        c.execute(
            "UPDATE jobs SET state = %s, end_time = graft_now(), error = %s, error_json = %s,"
            " model_version = %s, metrics_json = %s, lease_expires = 0 WHERE job_id = %s",
            (
                int(state),
                error,
                dumps(error_detail) if error_detail else "",
                model_version,
                metrics_to_json(metrics),
                job_id,
            ),
        )
        append_event_row(c, job_id, state_event(state, message, metrics))

    @staticmethod
    def _by_request(c: Conn, tenant: str, request_id: str, digest: str) -> Job | None:
        """The job `request_id` already created in `tenant` (None: none); AlreadyExists
        when it was created by a different request."""
        row = c.execute(
            f"SELECT {JOB_COLUMNS}, request_hash FROM jobs WHERE tenant = %s AND request_id = %s",
            (tenant, request_id),
        ).fetchone()
        if row is None:
            return None
        if row[-1] and row[-1] != digest:
            raise AlreadyExists(
                f"request_id {quote(request_id)} was used for another request "
                f"(job {row[0]}: model {row[1]!r}); a retry must send the same "
                "model, dataset and plan, or a new request_id"
            )
        return job_from_row(row[:-1])

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
        digest = request_digest(model_name, dataset, plan, advise_first) if request_id else ""
        with self._tx() as c:
            if request_id:
                known = self._by_request(c, tenant, request_id, digest)
                if known is not None:
                    return known, False
            if max_active:
                # Counting cannot lock rows that do not exist yet: creations for one model
                # take turns here, so two of them cannot both see room for one more.
                self._lock(c, "active-jobs", tenant, model_name)
                row = c.execute(
                    "SELECT COUNT(*) FROM jobs WHERE model_name = %s AND tenant = %s"
                    " AND state IN (%s, %s)",
                    (model_name, tenant, _QUEUED, _RUNNING),
                ).fetchone()
                active = int(row[0]) if row else 0
                if active >= max_active:
                    raise ResourceExhausted(
                        f"model {model_name!r} has {active} jobs queued or running, the most"
                        f" allowed ({max_active}); wait for one to end or cancel one",
                        retry_after=30.0,
                    )
            job_id = uuid.uuid4().hex
            inserted = c.execute(
                "INSERT INTO jobs (job_id, model_name, dataset_uri, dataset_id, plan_json,"
                " request_id, config_json, state, create_time, advise_first, plan_resolved,"
                " tenant, request_hash)"
                " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, graft_now(), %s, %s, %s, %s)"
                " ON CONFLICT (tenant, request_id) WHERE request_id <> '' DO NOTHING"
                " RETURNING job_id",
                (
                    job_id,
                    model_name,
                    dataset.uri,
                    dataset.dataset_id,
                    dumps(plan.to_dict()),
                    request_id,
                    config_json,
                    _QUEUED,
                    advise_first,
                    plan_resolved,
                    tenant,
                    digest,
                ),
            ).fetchone()
            if inserted is None:  # the same request_id, committed meanwhile by another call
                known = self._by_request(c, tenant, request_id, digest)
                assert known is not None
                return known, False
            append_event_row(c, job_id, state_event(JobState.QUEUED, "queued"))
            return self._get(c, job_id), True

    def get_job(self, job_id: str, tenant: str | None = None) -> Job:
        with self._tx() as c:
            return self._get(c, job_id, tenant)

    def get_job_config(self, job_id: str) -> str:
        with self._tx() as c:
            row = c.execute("SELECT config_json FROM jobs WHERE job_id = %s", (job_id,)).fetchone()
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
        # Keyset paging on the insertion order (seq), as in SQLite.
        where, args = _filters(("state", None if state is None else int(state)), ("tenant", tenant))
        if before:
            where += (" AND" if where else " WHERE") + " seq < %s"
            args = (*args, before)
        with self._tx() as c:
            rows = c.execute(
                f"SELECT {JOB_COLUMNS}, seq FROM jobs{where} ORDER BY seq DESC LIMIT %s",
                (*args, limit + 1),
            ).fetchall()
        more = len(rows) > limit
        rows = rows[:limit]
        return [job_from_row(r[:-1]) for r in rows], (int(rows[-1][-1]) if more else 0)

    def claim_job(self, worker_id: str, lease_seconds: float) -> Job | None:
        with self._tx() as c:
            while True:
                # Oldest first across both kinds (resumes before fresh starts). SKIP LOCKED:
                # a job another worker is claiming right now is passed over, not waited for,
                # so concurrent claims take different jobs and never block each other.
                row = c.execute(
                    "SELECT job_id, state, cancel_requested, lease_owner, attempts FROM jobs"
                    " WHERE state = %s OR (state = %s AND lease_expires <= graft_now())"
                    " ORDER BY seq LIMIT 1 FOR NO KEY UPDATE SKIP LOCKED",
                    (_QUEUED, _RUNNING),
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
                        f"cancelled: the lease of worker {previous_owner} expired while the"
                        " cancel was pending",
                    )
                    continue
                attempts += 1
                c.execute(
                    "UPDATE jobs SET state = %s, lease_owner = %s,"
                    " lease_expires = graft_now() + %s, attempts = %s,"
                    " start_time = COALESCE(start_time, graft_now()) WHERE job_id = %s",
                    (_RUNNING, worker_id, float(lease_seconds), attempts, job_id),
                )
                message = f"claimed by worker {worker_id} (attempt {attempts})"
                if state == JobState.RUNNING:
                    message += f" after the lease of worker {previous_owner} expired"
                append_event_row(c, job_id, state_event(JobState.RUNNING, message))
                return self._get(c, job_id)

    def renew_lease(self, job_id: str, worker_id: str, lease_seconds: float) -> bool:
        with self._tx() as c:
            # Still ours if nobody reclaimed it, even if it lapsed a moment ago.
            cur = c.execute(
                "UPDATE jobs SET lease_expires = graft_now() + %s WHERE job_id = %s"
                " AND state = %s AND lease_owner = %s",
                (float(lease_seconds), job_id, _RUNNING, worker_id),
            )
            return cur.rowcount == 1

    def request_cancel(self, job_id: str, tenant: str | None = None) -> Job:
        with self._tx() as c:
            job = self._get(c, job_id, tenant, lock=True)
            if job.state.terminal:
                raise FailedPrecondition(
                    f"job {job_id} has already ended ({job.state.name.lower()})"
                )
            if job.state == JobState.QUEUED:
                self._end(c, job_id, JobState.CANCELLED, "cancelled before it started")
            elif not job.cancel_requested:
                c.execute("UPDATE jobs SET cancel_requested = true WHERE job_id = %s", (job_id,))
                message = f"cancel requested; worker {job.lease_owner} will stop the job"
                payload = event_to_json(
                    ProgressEvent(kind=EventKind.MESSAGE, state=job.state, message=message)
                )
                append_event_row(c, job_id, payload)
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
        with self._tx() as c:
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
                message,
                error=error,
                error_detail=error_detail,
                model_version=model_version,
                metrics=metrics,
            )
            return self._get(c, job_id)

    def release_job(self, job_id: str, worker_id: str, reason: str) -> Job:
        with self._tx() as c:
            self._held(c, job_id, worker_id)
            c.execute(
                "UPDATE jobs SET state = %s, lease_owner = '', lease_expires = 0 WHERE job_id = %s",
                (_QUEUED, job_id),
            )
            message = f"released by worker {worker_id}: {reason}" if reason else "released"
            append_event_row(c, job_id, state_event(JobState.QUEUED, message))
            return self._get(c, job_id)

    def set_skipped_files(self, job_id: str, n: int) -> None:
        with self._tx() as c:
            cur = c.execute("UPDATE jobs SET skipped_files = %s WHERE job_id = %s", (n, job_id))
            if cur.rowcount == 0:
                raise NotFound(f"job {job_id!r} not found")

    def set_job_plan(self, job_id: str, worker_id: str, plan: TrainingPlan) -> Job:
        with self._tx() as c:
            job = self._held(c, job_id, worker_id)
            c.execute(
                "UPDATE jobs SET plan_json = %s, plan_resolved = true WHERE job_id = %s",
                (dumps(plan.to_dict()), job.job_id),
            )
            return self._get(c, job_id)

    def _held(self, c: Conn, job_id: str, worker_id: str) -> Job:
        job = self._get(c, job_id, lock=True)
        if job.state != JobState.RUNNING or job.lease_owner != worker_id:
            holder = job.lease_owner if job.state == JobState.RUNNING else ""
            raise FailedPrecondition(
                f"worker {worker_id} does not hold job {job_id} (it is "
                f"{job.state.name.lower()}, leased to {holder or 'nobody'})"
            )
        return job

    def job_progress(self, job_ids: Sequence[str]) -> dict[str, tuple[int, JobState]]:
        ids = list(dict.fromkeys(job_ids))
        if not ids:
            return {}
        with self._tx() as c:
            rows = c.execute(
                "SELECT job_id, last_sequence, state FROM jobs WHERE job_id = ANY(%s)", (ids,)
            ).fetchall()
        return {job_id: (int(last), JobState(state)) for job_id, last, state in rows}

    def queue_depth(self) -> int:
        with self._tx() as c:
            row = c.execute("SELECT COUNT(*) FROM jobs WHERE state = %s", (_QUEUED,)).fetchone()
        return int(row[0]) if row else 0

    def oldest_queued_age(self, now: float) -> float:
        with self._tx() as c:
            row = c.execute(
                "SELECT MIN(create_time) FROM jobs WHERE state = %s", (_QUEUED,)
            ).fetchone()
        oldest = row[0] if row else None
        return 0.0 if oldest is None else max(0.0, now - oldest)

    def count_jobs_by_state(self) -> dict[JobState, int]:
        counts: dict[JobState, int] = {s: 0 for s in JobState if s != JobState.UNSPECIFIED}
        with self._tx() as c:
            for state, n in c.execute("SELECT state, COUNT(*) FROM jobs GROUP BY state"):
                counts[JobState(state)] = int(n)
        return counts
