"""`JobQueueStore`: jobs, their leases and their progress events (the contract common to
every part is in `graft.store.protocols`)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

from graft.domain import (
    DEFAULT_TENANT,
    DatasetRef,
    EvaluationMetrics,
    Job,
    JobState,
    ProgressEvent,
    TrainingPlan,
)


@runtime_checkable
class JobQueueStore(Protocol):
    """Jobs, their leases and their progress events."""

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
        """Queue a new job of `tenant` and append its event 1 (STATE QUEUED), atomically.

        A non-empty `request_id` already used in `tenant` returns that job and False
        (nothing new); request ids of different tenants never meet.
        `max_active` > 0: ResourceExhausted (with a retry hint) when `model_name` already
        has that many jobs QUEUED or RUNNING (a retried request_id is still answered).
        `plan_resolved=False`: `plan` is the caller's, to be completed by the worker once it
        has scanned the dataset (`set_job_plan`); `advise_first`: the worker advises first.
        """
        ...

    def get_job(self, job_id: str, tenant: str | None = None) -> Job:
        """The job, or NotFound (also when it belongs to another tenant than `tenant`)."""
        ...

    def get_job_config(self, job_id: str) -> str:
        """The `config_json` the job was created with ("" if none), or NotFound."""
        ...

    def list_jobs(
        self, state: JobState | None = None, limit: int = 100, tenant: str | None = None
    ) -> list[Job]:
        """Jobs newest first, optionally only those in `state`, of `tenant` (None: all)."""
        ...

    def list_jobs_page(
        self,
        state: JobState | None = None,
        limit: int = 100,
        tenant: str | None = None,
        before: int = 0,
    ) -> tuple[list[Job], int]:
        """A page of `list_jobs`: at most `limit` jobs created before the cursor `before`
        (0: from the newest), and the cursor of the next page (0: this was the last)."""
        ...

    def claim_job(self, worker_id: str, lease_seconds: float) -> Job | None:
        """Take the oldest QUEUED job, or a RUNNING one whose lease has expired.

        The job becomes RUNNING, leased to `worker_id` until now + `lease_seconds`, its
        `attempts` goes up by one and a STATE RUNNING event says who claimed it. A job
        whose lease expired while a cancel was pending is CANCELLED instead. None when
        there is nothing to do.
        """
        ...

    def renew_lease(self, job_id: str, worker_id: str, lease_seconds: float) -> bool:
        """Extend the lease to now + `lease_seconds`; False if `worker_id` no longer holds
        it (another worker reclaimed it, or the job ended)."""
        ...

    def request_cancel(self, job_id: str, tenant: str | None = None) -> Job:
        """QUEUED: CANCELLED at once. RUNNING: `cancel_requested` (the worker stops it).
        Already ended: FailedPrecondition. Another tenant's job: NotFound."""
        ...

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
        """End a RUNNING job held by `worker_id` in terminal `state`, appending its final
        STATE event, atomically. Anyone but the lease holder: FailedPrecondition.
        `error_detail` is the failure as graft.errors.error_to_dict gives it."""
        ...

    def set_job_plan(self, job_id: str, worker_id: str, plan: TrainingPlan) -> Job:
        """Record the completed plan of a job `worker_id` holds (`plan_resolved` becomes
        True). Anyone but the lease holder: FailedPrecondition."""
        ...

    def job_progress(self, job_ids: Sequence[str]) -> dict[str, tuple[int, JobState]]:
        """For each known job of `job_ids`: (last_sequence, state), in one read. The API's
        progress watcher polls this for every job someone follows."""
        ...

    def release_job(self, job_id: str, worker_id: str, reason: str) -> Job:
        """Hand a RUNNING job that `worker_id` holds back to the queue (the worker is
        shutting down; the next claim resumes it from its checkpoint), with a QUEUED STATE
        event quoting `reason`. FailedPrecondition when the worker does not hold it."""
        ...

    def set_skipped_files(self, job_id: str, n: int) -> None:
        """Record how many dataset files the worker could not read."""
        ...

    def queue_depth(self) -> int:
        """How many jobs are QUEUED."""
        ...

    def oldest_queued_age(self, now: float) -> float:
        """Seconds since the oldest QUEUED job was created; 0.0 when none is queued."""
        ...

    def count_jobs_by_state(self) -> dict[JobState, int]:
        """Job counts for every state but UNSPECIFIED (zeros included)."""
        ...

    def append_event(self, job_id: str, event: ProgressEvent) -> ProgressEvent:
        """Append to the job's log: sequence = previous + 1 (no gap, no duplicate, across
        processes), time = now; returns the stored event. An event with state UNSPECIFIED
        gets the job's current state. NotFound for an unknown job; FailedPrecondition once
        the job has ended (its final STATE event is the last one)."""
        ...

    def events_after(
        self, job_id: str, after_sequence: int, limit: int = 1000
    ) -> list[ProgressEvent]:
        """Events with sequence > `after_sequence`, ascending, at most `limit` ([] for an
        unknown job)."""
        ...
