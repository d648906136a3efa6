"""The job store's interface: the only channel between the API server and the workers.

Every implementation (SQLite now, PostgreSQL later) passes the one contract suite in
`tests/unit/test_store.py`. Times are epoch seconds (`time.time()` floats) from the
store's injected clock. Errors are the typed ones of `graft.errors`: `NotFound` for an
unknown job/model/version/alias/upload, `FailedPrecondition` for a transition the job's
state does not allow, `Unavailable` when the database cannot be reached or stays locked.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from graft.domain import (
    DatasetRef,
    EvaluationMetrics,
    Job,
    JobState,
    ModelRef,
    ModelVersion,
    ProgressEvent,
    Task,
    TaskKind,
    TrainingPlan,
)


@dataclass(frozen=True)
class WorkerInfo:
    """What a worker last reported about itself (see `heartbeat_worker`)."""

    worker_id: str
    pid: int
    host: str
    last_heartbeat: float
    info: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class UploadInfo:
    """A dataset uploaded through UploadDataset, stored on disk at `path`."""

    dataset_id: str
    path: str
    size_bytes: int
    fingerprint: str
    create_time: float


# Called by `add_model_version` inside its write transaction, with the version about to be
# committed (its number, create_time and final card filled in, `artifact_dir` not yet).
# It puts the artifact in place and returns its directory, which is what the row records.
# If it raises, nothing is committed. See docs/STORE.md, "Registry crash ordering".
PublishArtifact = Callable[[ModelVersion], str]


@runtime_checkable
class JobStore(Protocol):
    # --- jobs -------------------------------------------------------------------------

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
    ) -> tuple[Job, bool]:
        """Queue a new job and append its event 1 (STATE QUEUED), atomically.

        A non-empty `request_id` already used returns that job and False (nothing new).
        `max_active` > 0: ResourceExhausted (with a retry hint) when `model_name` already
        has that many jobs QUEUED or RUNNING (a retried request_id is still answered).
        `plan_resolved=False`: `plan` is the caller's, to be completed by the worker once it
        has scanned the dataset (`set_job_plan`); `advise_first`: the worker advises first.
        """
        ...

    def get_job(self, job_id: str) -> Job:
        """The job, or NotFound."""
        ...

    def get_job_config(self, job_id: str) -> str:
        """The `config_json` the job was created with ("" if none), or NotFound."""
        ...

    def list_jobs(self, state: JobState | None = None, limit: int = 100) -> list[Job]:
        """Jobs newest first, optionally only those in `state`."""
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

    def request_cancel(self, job_id: str) -> Job:
        """QUEUED: CANCELLED at once. RUNNING: `cancel_requested` (the worker stops it).
        Already ended: FailedPrecondition."""
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

    # --- progress events --------------------------------------------------------------

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

    # --- workers ----------------------------------------------------------------------

    def heartbeat_worker(self, worker_id: str, pid: int, host: str, info: dict[str, Any]) -> None:
        """Insert or update the worker's row with last_heartbeat = now."""
        ...

    def list_workers(self) -> list[WorkerInfo]:
        """Every worker that ever sent a heartbeat, by worker_id."""
        ...

    # --- registry metadata ------------------------------------------------------------

    def add_model_version(
        self,
        *,
        name: str,
        job_id: str,
        backbone: str,
        labels: tuple[str, ...] | list[str],
        sha256: str,
        card: dict[str, Any],
        artifact_dir: str,
        metrics: EvaluationMetrics | None,
        publish: PublishArtifact | None = None,
    ) -> ModelVersion:
        """Record the next version of `name` (1, 2, …, allocated in the transaction).

        The stored card is `card` plus name, version, sha256 and create_time. With
        `publish`, the artifact is put in place inside the transaction (see
        `PublishArtifact`) and its returned directory replaces `artifact_dir`.
        """
        ...

    def get_model_version(self, name: str, version: int) -> ModelVersion:
        """That version, aliases filled in, or NotFound."""
        ...

    def resolve_model(self, ref: ModelRef) -> ModelVersion:
        """`ref.version` if set, else `ref.alias` if set, else the newest version."""
        ...

    def list_models(self, name_prefix: str = "") -> dict[str, list[ModelVersion]]:
        """Models whose name starts with `name_prefix`, by name; versions oldest first."""
        ...

    def set_alias(self, name: str, alias: str, version: int) -> ModelVersion:
        """Point `alias` at `version` (moving it if it pointed elsewhere)."""
        ...

    def count_model_versions(self) -> int:
        """All versions of all models."""
        ...

    # --- uploads ----------------------------------------------------------------------

    def add_upload(self, dataset_id: str, path: str, size_bytes: int, fingerprint: str) -> None:
        """Record an upload. The same id again with the same fingerprint is a no-op; with
        another fingerprint, AlreadyExists."""
        ...

    def get_upload(self, dataset_id: str) -> UploadInfo:
        """The upload, or NotFound."""
        ...

    # --- tasks (short work the API awaits: Advise, upload checks) ----------------------

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

    # --- lifecycle --------------------------------------------------------------------

    def ping(self) -> None:
        """Return if the database answers; raise Unavailable otherwise."""
        ...

    def close(self) -> None:
        """Release connections. Further calls raise Unavailable."""
        ...
