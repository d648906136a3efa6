"""The job store's interface: the only channel between the API server and the workers.

Every implementation (SQLite now, PostgreSQL later) passes the one contract suite in
`tests/unit/test_store.py`. Times are epoch seconds (`time.time()` floats) from the
store's injected clock. Errors are the typed ones of `graft.errors`: `NotFound` for an
unknown job/model/version/alias/upload, `FailedPrecondition` for a transition the job's
state does not allow, `Unavailable` when the database cannot be reached or stays locked.

Tenants: jobs, model versions (with their aliases) and uploads each belong to one tenant
(`graft.domain.DEFAULT_TENANT` unless said otherwise). Model names are per tenant. Where a
method takes `tenant: str | None`, a string confines it to that tenant's rows (another
tenant's job or upload is NotFound, exactly like one that does not exist) and None means
every tenant (workers, admins); the API passes the caller's scope (graft.api.auth).

The interface comes in parts, one protocol each: `JobQueueStore` (jobs, leases, progress
events), `TaskStore`, `ModelStore` (versions and aliases), `UploadStore`, `WorkerStore`,
`KeyStore` and `StoreLifecycle`. `JobStore` is all of them together: what a backend
provides and what the server and the workers hold.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from graft.domain import (
    DEFAULT_TENANT,
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
    """A dataset uploaded through UploadDataset, stored on disk at `path`: its archive
    (`size_bytes`; `fingerprint` is its sha256) and its extracted copy (`extracted_bytes`).
    `last_used`: when it was uploaded, named by a new job or Advise, or a job that trained
    on it ended, whichever is latest."""

    dataset_id: str
    path: str
    size_bytes: int
    fingerprint: str
    create_time: float
    tenant: str = DEFAULT_TENANT
    filename: str = ""
    extracted_bytes: int = 0
    last_used: float = 0.0

    @property
    def stored_bytes(self) -> int:
        """What it counts against its tenant's upload quota."""
        return self.size_bytes + self.extracted_bytes


@dataclass(frozen=True)
class ApiKey:
    """An API key as the store keeps it: never the token, only its sha256 (graft.apikeys).
    `revoke_time` is None while the key is valid."""

    key_id: str
    tenant: str
    admin: bool
    name: str
    create_time: float
    revoke_time: float | None = None


# Called by `add_model_version` inside its write transaction, with the version about to be
# committed (its number, create_time and final card filled in, `artifact_dir` not yet).
# It puts the artifact in place and returns its directory, which is what the row records.
# If it raises, nothing is committed. See docs/STORE.md, "Registry crash ordering".
PublishArtifact = Callable[[ModelVersion], str]


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


@runtime_checkable
class ModelStore(Protocol):
    """Registry metadata: model versions and their aliases."""

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
        tenant: str = DEFAULT_TENANT,
    ) -> ModelVersion:
        """Record the next version of `tenant`'s model `name` (1, 2, …, allocated in the
        transaction; each tenant's `name` counts on its own).

        The stored card is `card` plus name, version, sha256 and create_time. With
        `publish`, the artifact is put in place inside the transaction (see
        `PublishArtifact`) and its returned directory replaces `artifact_dir`.
        """
        ...

    def get_model_version(
        self, name: str, version: int, tenant: str = DEFAULT_TENANT
    ) -> ModelVersion:
        """That version of `tenant`'s model, aliases filled in, or NotFound."""
        ...

    def resolve_model(self, ref: ModelRef) -> ModelVersion:
        """`ref.version` if set, else `ref.alias` if set, else the newest version, of the
        model `ref.name` of `ref.tenant`."""
        ...

    def list_models(
        self, name_prefix: str = "", tenant: str | None = None
    ) -> dict[str, list[ModelVersion]]:
        """Models of `tenant` (None: of every tenant) whose name starts with `name_prefix`,
        by name; versions oldest first (with tenant None: by tenant, then oldest first, and
        a name used by several tenants lists all their versions)."""
        ...

    def list_model_versions_page(
        self,
        name_prefix: str = "",
        tenant: str | None = None,
        limit: int = 100,
        after: tuple[str, str, int] | None = None,
    ) -> tuple[list[ModelVersion], tuple[str, str, int] | None]:
        """At most `limit` versions in `list_models` order (name, tenant, version) after
        the cursor `after` (None: from the first), and the cursor of the next page (None:
        this was the last)."""
        ...

    def set_alias(
        self, name: str, alias: str, version: int, tenant: str = DEFAULT_TENANT
    ) -> ModelVersion:
        """Point `alias` of `tenant`'s model `name` at `version` (moving it if it pointed
        elsewhere)."""
        ...

    def count_model_versions(self) -> int:
        """All versions of all models."""
        ...


@runtime_checkable
class UploadStore(Protocol):
    """Uploaded datasets. Whether one is in use is judged against the jobs and
    tasks of the same store."""

    def add_upload(
        self,
        dataset_id: str,
        path: str,
        size_bytes: int,
        fingerprint: str,
        tenant: str = DEFAULT_TENANT,
        *,
        filename: str = "",
        quota_bytes: int = 0,
    ) -> None:
        """Record an upload of `tenant`, last used now. The same id again with the same
        fingerprint and tenant is a no-op; otherwise AlreadyExists. With `quota_bytes`
        (0: none), ResourceExhausted if the tenant's uploads would then store more."""
        ...

    def get_upload(self, dataset_id: str, tenant: str | None = None) -> UploadInfo:
        """The upload, or NotFound (also when it belongs to another tenant than `tenant`)."""
        ...

    def set_upload_extracted(
        self, dataset_id: str, extracted_bytes: int, quota_bytes: int = 0
    ) -> UploadInfo:
        """Record the size of the upload's extracted copy. With `quota_bytes` (0: none),
        ResourceExhausted (nothing changed) if its tenant's uploads would then store more.
        NotFound for an unknown id."""
        ...

    def touch_upload(self, dataset_id: str) -> None:
        """The upload was used now (a new job or Advise names it); unknown ids are ignored."""
        ...

    def list_uploads(self, tenant: str | None = None, limit: int = 0) -> list[UploadInfo]:
        """`tenant`'s uploads (None: every tenant's), newest first; at most `limit` (0: all)."""
        ...

    def upload_usage(self, tenant: str | None = None) -> int:
        """Bytes `tenant`'s uploads store, archives and extracted copies (None: all)."""
        ...

    def delete_upload(
        self, dataset_id: str, tenant: str | None = None, *, force: bool = False
    ) -> UploadInfo:
        """Forget the upload and return what it was (its files are the caller's to remove).
        NotFound as `get_upload`; FailedPrecondition naming the user while a queued or
        running job, or a queued or running task (an Advise, its own check), names it,
        unless `force` (the upload's own failed check cleaning up)."""
        ...

    def expire_uploads(self, unused_before: float) -> list[UploadInfo]:
        """Forget every upload last used before `unused_before` that nothing uses (as
        `delete_upload` judges it), in one transaction; returns them (their files are the
        caller's to remove)."""
        ...

    def active_datasets(self) -> list[DatasetRef]:
        """The datasets of queued and running jobs (each distinct one once)."""
        ...


@runtime_checkable
class WorkerStore(Protocol):
    """What workers report about themselves."""

    def heartbeat_worker(self, worker_id: str, pid: int, host: str, info: dict[str, Any]) -> None:
        """Insert or update the worker's row with last_heartbeat = now."""
        ...

    def list_workers(self) -> list[WorkerInfo]:
        """Every worker that ever sent a heartbeat, by worker_id."""
        ...


@runtime_checkable
class KeyStore(Protocol):
    """API keys, kept by the sha256 of their tokens."""

    def add_api_key(
        self, key_id: str, token_hash: str, tenant: str, *, admin: bool = False, name: str = ""
    ) -> ApiKey:
        """Record a new key by the sha256 of its token (hex). AlreadyExists if `key_id` or
        `token_hash` is taken."""
        ...

    def api_key_by_hash(self, token_hash: str) -> ApiKey:
        """The key whose token hashes to `token_hash`, revoked or not, or NotFound."""
        ...

    def list_api_keys(self) -> list[ApiKey]:
        """Every key, revoked ones included, oldest first."""
        ...

    def revoke_api_key(self, key_id: str) -> ApiKey:
        """Revoke the key (from now on it authenticates nothing); revoking it again changes
        nothing. NotFound for an unknown id."""
        ...


@runtime_checkable
class StoreLifecycle(Protocol):
    """Health and shutdown of a store."""

    def ping(self) -> None:
        """Return if the database answers; raise Unavailable otherwise."""
        ...

    def close(self) -> None:
        """Release connections. Further calls raise Unavailable."""
        ...


@runtime_checkable
class JobStore(
    JobQueueStore,
    TaskStore,
    ModelStore,
    UploadStore,
    WorkerStore,
    KeyStore,
    StoreLifecycle,
    Protocol,
):
    """The whole store: every part above, on one database. What the server and the
    workers hold (`graft.store.open_store`); a backend implements it part by part."""
