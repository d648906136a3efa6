"""The SQLite job store: one file shared by the API server (many threads) and the workers
(other processes) on one host.

Concurrency, in short (docs/STORE.md has the reasons):

- WAL journal, so readers never block the writer nor the writer the readers;
  `synchronous=NORMAL` (a process crash loses nothing committed; a power cut may lose the
  last commits, never corrupt the file).
- One connection per thread (`threading.local`), opened lazily, closed together by
  `close()`. A connection is never shared between threads, so no Python-side lock is held
  while SQLite works, and a thread waiting on the write lock blocks nobody else's reads.
- Every write is one short `BEGIN IMMEDIATE … COMMIT`: the write lock is taken up front,
  so read-then-write sequences (next event sequence, next model version, claim the
  oldest job) cannot interleave with another process's, and a busy database is waited on
  by SQLite's busy handler (`busy_timeout`) at BEGIN rather than failing mid-transaction.
  A lock still busy after the timeout surfaces as `graft.errors.Unavailable`.
- Multi-statement reads run in a deferred `BEGIN`, so they see one snapshot.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from graft.domain import (
    DEFAULT_TENANT,
    DatasetRef,
    EvaluationMetrics,
    EventKind,
    Job,
    JobState,
    ModelRef,
    ModelVersion,
    ProgressEvent,
    Task,
    TaskKind,
    TrainingPlan,
)
from graft.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
    Unavailable,
    quote,
)
from graft.store.codec import (
    JOB_COLUMNS,
    MODEL_COLUMNS,
    TASK_COLUMNS,
    dumps,
    event_from_row,
    event_to_json,
    job_from_row,
    metrics_to_json,
    model_from_row,
    request_digest,
    state_event,
    task_from_row,
)
from graft.store.protocol import ApiKey, PublishArtifact, UploadInfo, WorkerInfo

log = logging.getLogger(__name__)

SCHEMA_VERSION = 5

# Applied in one transaction when the file has no schema yet (then _MIGRATIONS[1:]);
# _MIGRATIONS[v] takes a file from schema version v to v + 1.
_SCHEMA = (
    """CREATE TABLE jobs (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,  -- insertion order: FIFO claims, newest-first lists
        job_id TEXT NOT NULL UNIQUE,
        model_name TEXT NOT NULL,
        dataset_uri TEXT NOT NULL DEFAULT '',
        dataset_id TEXT NOT NULL DEFAULT '',
        plan_json TEXT NOT NULL,
        request_id TEXT NOT NULL DEFAULT '',
        config_json TEXT NOT NULL DEFAULT '',
        state INTEGER NOT NULL,
        create_time REAL NOT NULL,
        start_time REAL,
        end_time REAL,
        error TEXT NOT NULL DEFAULT '',
        model_version INTEGER NOT NULL DEFAULT 0,
        attempts INTEGER NOT NULL DEFAULT 0,
        cancel_requested INTEGER NOT NULL DEFAULT 0,
        last_sequence INTEGER NOT NULL DEFAULT 0,
        skipped_files INTEGER NOT NULL DEFAULT 0,
        metrics_json TEXT NOT NULL DEFAULT '',
        lease_owner TEXT NOT NULL DEFAULT '',
        lease_expires REAL NOT NULL DEFAULT 0
    )""",
    "CREATE UNIQUE INDEX jobs_request_id ON jobs (request_id) WHERE request_id <> ''",
    "CREATE INDEX jobs_state ON jobs (state, seq)",
    """CREATE TABLE events (
        job_id TEXT NOT NULL REFERENCES jobs (job_id) ON DELETE CASCADE,
        sequence INTEGER NOT NULL,
        time REAL NOT NULL,
        payload_json TEXT NOT NULL,
        PRIMARY KEY (job_id, sequence)
    ) WITHOUT ROWID""",
    """CREATE TABLE workers (
        worker_id TEXT PRIMARY KEY,
        pid INTEGER NOT NULL,
        host TEXT NOT NULL,
        last_heartbeat REAL NOT NULL,
        info_json TEXT NOT NULL
    )""",
    """CREATE TABLE model_versions (
        name TEXT NOT NULL,
        version INTEGER NOT NULL,
        create_time REAL NOT NULL,
        job_id TEXT NOT NULL,
        backbone TEXT NOT NULL,
        labels_json TEXT NOT NULL,
        sha256 TEXT NOT NULL,
        card_json TEXT NOT NULL,
        artifact_dir TEXT NOT NULL,
        metrics_json TEXT NOT NULL DEFAULT '',
        PRIMARY KEY (name, version)
    )""",
    """CREATE TABLE model_aliases (
        name TEXT NOT NULL,
        alias TEXT NOT NULL,
        version INTEGER NOT NULL,
        PRIMARY KEY (name, alias),
        FOREIGN KEY (name, version) REFERENCES model_versions (name, version)
    )""",
    """CREATE TABLE uploads (
        dataset_id TEXT PRIMARY KEY,
        path TEXT NOT NULL,
        size_bytes INTEGER NOT NULL,
        fingerprint TEXT NOT NULL,
        create_time REAL NOT NULL
    )""",
)

_MIGRATIONS: dict[int, tuple[str, ...]] = {
    # 1 -> 2: work moves to the workers. A job may be queued before its plan is resolved
    # (the worker scans the dataset, then resolves or advises); failures keep their kind
    # and field violations; tasks are the short work (Advise, upload checks) the API awaits.
    1: (
        "ALTER TABLE jobs ADD COLUMN advise_first INTEGER NOT NULL DEFAULT 0",
        "ALTER TABLE jobs ADD COLUMN plan_resolved INTEGER NOT NULL DEFAULT 1",
        "ALTER TABLE jobs ADD COLUMN error_json TEXT NOT NULL DEFAULT ''",
        "CREATE INDEX jobs_model_state ON jobs (model_name, state)",
        """CREATE TABLE tasks (
            seq INTEGER PRIMARY KEY AUTOINCREMENT,  -- FIFO claims
            task_id TEXT NOT NULL UNIQUE,
            kind INTEGER NOT NULL,
            state INTEGER NOT NULL,
            request_json TEXT NOT NULL,
            create_time REAL NOT NULL,
            deadline REAL NOT NULL DEFAULT 0,
            result_json TEXT NOT NULL DEFAULT '',
            error_json TEXT NOT NULL DEFAULT '',
            cancel_requested INTEGER NOT NULL DEFAULT 0,
            lease_owner TEXT NOT NULL DEFAULT '',
            lease_expires REAL NOT NULL DEFAULT 0,
            worker_pid INTEGER NOT NULL DEFAULT 0,
            start_time REAL,
            end_time REAL
        )""",
        "CREATE INDEX tasks_state ON tasks (state, kind, seq)",
    ),
    # 2 -> 3: tenants and API keys. Every existing row belongs to the default tenant.
    # Request ids and model names become per tenant: the model tables are rebuilt with the
    # tenant in their keys (SQLite cannot change a primary key in place): both new tables
    # are filled before the old ones are dropped (aliases first, as they reference the
    # versions), and renaming model_versions_v3 rewrites the new aliases' foreign key.
    2: (
        f"ALTER TABLE jobs ADD COLUMN tenant TEXT NOT NULL DEFAULT '{DEFAULT_TENANT}'",
        "DROP INDEX jobs_request_id",
        "CREATE UNIQUE INDEX jobs_request_id ON jobs (tenant, request_id) WHERE request_id <> ''",
        "CREATE INDEX jobs_tenant ON jobs (tenant, seq)",
        f"ALTER TABLE uploads ADD COLUMN tenant TEXT NOT NULL DEFAULT '{DEFAULT_TENANT}'",
        f"""CREATE TABLE model_versions_v3 (
            tenant TEXT NOT NULL DEFAULT '{DEFAULT_TENANT}',
            name TEXT NOT NULL,
            version INTEGER NOT NULL,
            create_time REAL NOT NULL,
            job_id TEXT NOT NULL,
            backbone TEXT NOT NULL,
            labels_json TEXT NOT NULL,
            sha256 TEXT NOT NULL,
            card_json TEXT NOT NULL,
            artifact_dir TEXT NOT NULL,
            metrics_json TEXT NOT NULL DEFAULT '',
            PRIMARY KEY (tenant, name, version)
        )""",
        f"""INSERT INTO model_versions_v3 (tenant, name, version, create_time, job_id, backbone,
            labels_json, sha256, card_json, artifact_dir, metrics_json)
            SELECT '{DEFAULT_TENANT}', name, version, create_time, job_id, backbone,
            labels_json, sha256, card_json, artifact_dir, metrics_json FROM model_versions""",
        """CREATE TABLE model_aliases_v3 (
            tenant TEXT NOT NULL,
            name TEXT NOT NULL,
            alias TEXT NOT NULL,
            version INTEGER NOT NULL,
            PRIMARY KEY (tenant, name, alias),
            FOREIGN KEY (tenant, name, version)
                REFERENCES model_versions_v3 (tenant, name, version)
        )""",
        f"""INSERT INTO model_aliases_v3 (tenant, name, alias, version)
            SELECT '{DEFAULT_TENANT}', name, alias, version FROM model_aliases""",
        "DROP TABLE model_aliases",
        "DROP TABLE model_versions",
        "ALTER TABLE model_versions_v3 RENAME TO model_versions",
        "ALTER TABLE model_aliases_v3 RENAME TO model_aliases",
        """CREATE TABLE api_keys (
            key_id TEXT PRIMARY KEY,
            token_hash TEXT NOT NULL UNIQUE,  -- sha256 of the token, hex; never the token
            tenant TEXT NOT NULL,
            admin INTEGER NOT NULL DEFAULT 0,
            name TEXT NOT NULL DEFAULT '',
            create_time REAL NOT NULL,
            revoke_time REAL
        )""",
    ),
    # 3 -> 4: a job remembers a digest of the request that created it, so a request_id
    # sent again with a different request is refused instead of answered with the first
    # job (the plan itself is rewritten once resolved). Older jobs have none: not compared.
    3: ("ALTER TABLE jobs ADD COLUMN request_hash TEXT NOT NULL DEFAULT ''",),
    # 4 -> 5: upload quotas and expiry. An upload records its file name, the bytes of its
    # extracted copy (0 for older ones: theirs went to the shared cache) and when it was
    # last used (uploaded, or named by a new job or Advise); jobs are found by upload.
    4: (
        "ALTER TABLE uploads ADD COLUMN filename TEXT NOT NULL DEFAULT ''",
        "ALTER TABLE uploads ADD COLUMN extracted_bytes INTEGER NOT NULL DEFAULT 0",
        "ALTER TABLE uploads ADD COLUMN last_used REAL NOT NULL DEFAULT 0",
        "UPDATE uploads SET last_used = create_time",
        "CREATE INDEX uploads_tenant ON uploads (tenant, create_time)",
        "CREATE INDEX jobs_dataset_id ON jobs (dataset_id) WHERE dataset_id <> ''",
    ),
}
# Ended tasks are kept this long (for a caller that polls once more), then deleted.
TASK_RETENTION_SECONDS = 3600.0
# Ids per `IN (...)` query (SQLite allows 32766 parameters).
_IN_CHUNK = 500


def _filters(*conditions: tuple[str, object]) -> tuple[str, tuple[object, ...]]:
    """A WHERE clause matching each (column, value) whose value is not None, and its
    arguments ("" and () when every value is None). Column names are the caller's literals."""
    used = [(column, value) for column, value in conditions if value is not None]
    if not used:
        return "", ()
    return " WHERE " + " AND ".join(f"{column} = ?" for column, _ in used), tuple(
        v for _, v in used
    )


class SqliteJobStore:
    """`JobStore` on one SQLite file. Safe to use from many threads and processes.

    `path` must be a file (not ":memory:": each thread has its own connection).
    `clock` gives every time the store records, so tests can move time instead of sleeping.
    """

    def __init__(
        self,
        path: Path | str,
        *,
        clock: Callable[[], float] = time.time,
        busy_timeout_s: float = 10.0,
    ) -> None:
        self.path = Path(path)
        self._clock = clock
        self._busy_timeout_s = busy_timeout_s
        self._local = threading.local()
        self._lock = threading.Lock()  # guards _conns, _busy and _closed only
        self._idle = threading.Condition(self._lock)
        self._conns: dict[threading.Thread, sqlite3.Connection] = {}
        self._busy = 0  # transactions in progress: close() waits for them
        self._pid = os.getpid()
        self._closed = False
        self._init_schema()

    # --- connections and transactions -------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        try:
            conn = sqlite3.connect(
                self.path,
                timeout=self._busy_timeout_s,
                isolation_level=None,  # we issue BEGIN/COMMIT ourselves
                check_same_thread=False,  # only so close() may close it from another thread
            )
            conn.execute(f"PRAGMA busy_timeout = {int(self._busy_timeout_s * 1000)}")
            conn.execute("PRAGMA foreign_keys = ON")
            conn.execute("PRAGMA synchronous = NORMAL")
        except sqlite3.Error as e:
            raise Unavailable(f"job store {self.path} is unreachable: {e}") from e
        return conn

    def _conn(self) -> sqlite3.Connection:
        """This thread's connection, opened on first use."""
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        pid = os.getpid()
        if conn is not None and self._local.pid == pid:
            return conn
        with self._lock:
            if self._closed:
                raise Unavailable(f"job store {self.path} is closed")
            if pid != self._pid:
                # A forked child must not touch its parent's connections (SQLite forbids
                # it); drop them unclosed and start afresh.
                self._conns = {}
                self._pid = pid
            # Connections of threads that have ended are closed here, so a server whose
            # thread pool churns does not accumulate file handles.
            for thread in [t for t in self._conns if not t.is_alive()]:
                self._conns.pop(thread).close()
        conn = self._connect()
        with self._lock:
            self._conns[threading.current_thread()] = conn
        self._local.conn = conn
        self._local.pid = pid
        return conn

    @contextmanager
    def _tx(self, *, write: bool) -> Iterator[sqlite3.Connection]:
        """One transaction: BEGIN IMMEDIATE for writes (the write lock up front), a
        deferred BEGIN (one consistent snapshot) for reads. Commits on normal exit,
        rolls back on any exception."""
        conn = self._conn()
        with self._lock:
            if self._closed:
                raise Unavailable(f"job store {self.path} is closed")
            self._busy += 1
        try:
            conn.execute("BEGIN IMMEDIATE" if write else "BEGIN")
            try:
                yield conn
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
        except sqlite3.OperationalError as e:
            # "database is locked" past busy_timeout, disk I/O errors, a vanished file.
            if conn.in_transaction:
                try:
                    conn.execute("ROLLBACK")
                except sqlite3.Error:
                    log.exception("rollback failed")
            raise Unavailable(f"job store {self.path}: {e}") from e
        finally:
            with self._lock:
                self._busy -= 1
                if not self._busy:
                    self._idle.notify_all()

    def _init_schema(self) -> None:
        conn = self._conn()
        # Switching to WAL needs a moment with no other connection mid-transaction; when
        # several processes open a fresh file at once, one of them may find it busy.
        deadline = time.monotonic() + self._busy_timeout_s
        while True:
            try:
                mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
                break
            except sqlite3.OperationalError as e:
                if "locked" not in str(e) or time.monotonic() > deadline:
                    raise Unavailable(f"job store {self.path}: {e}") from e
                time.sleep(0.02)
        if mode.lower() != "wal":
            log.warning("job store %s: journal mode is %s, not WAL", self.path, mode)
        with self._tx(write=True) as c:
            c.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
            row = c.execute("SELECT MAX(version) FROM schema_version").fetchone()
            found = row[0]
            if found is None:
                for statement in _SCHEMA:
                    c.execute(statement)
                found = 1
                c.execute("INSERT INTO schema_version (version) VALUES (1)")
            if found < SCHEMA_VERSION:
                for version in range(found, SCHEMA_VERSION):
                    for statement in _MIGRATIONS[version]:
                        c.execute(statement)
                c.execute("UPDATE schema_version SET version = ?", (SCHEMA_VERSION,))
            elif found > SCHEMA_VERSION:
                raise FailedPrecondition(
                    f"job store {self.path} has schema version {found}, newer than this "
                    f"Graft understands ({SCHEMA_VERSION}); upgrade Graft"
                )

    def ping(self) -> None:
        try:
            with self._tx(write=False) as c:
                c.execute("SELECT version FROM schema_version").fetchone()
        except sqlite3.Error as e:
            raise Unavailable(f"job store {self.path} is unreachable: {e}") from e

    def close(self) -> None:
        """Refuse new transactions, wait (at most the busy timeout) for those in progress
        in other threads, then close every connection. Closing a connection that another
        thread is using would crash the interpreter inside SQLite, so when a transaction
        is still running after the wait its connections are left to the garbage collector.
        """
        with self._lock:
            self._closed = True
            idle = self._idle.wait_for(lambda: not self._busy, timeout=self._busy_timeout_s)
            conns, self._conns = self._conns, {}
            same_process = self._pid == os.getpid()
        if not idle:
            log.warning("job store %s closed with a transaction still running", self.path)
        elif same_process:
            for conn in conns.values():
                conn.close()
        self._local = threading.local()

    def __enter__(self) -> SqliteJobStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- jobs -------------------------------------------------------------------------

    @staticmethod
    def _get(c: sqlite3.Connection, job_id: str, tenant: str | None = None) -> Job:
        row = c.execute(f"SELECT {JOB_COLUMNS} FROM jobs WHERE job_id = ?", (job_id,)).fetchone()
        if row is None or (tenant is not None and job_from_row(row).tenant != tenant):
            raise NotFound(f"job {job_id!r} not found")  # the same words for both: no leak
        return job_from_row(row)

    @staticmethod
    def _append(c: sqlite3.Connection, job_id: str, payload_json: str, now: float) -> int:
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
        self._append(c, job_id, state_event(state, message, metrics), now)

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
            self._append(c, job_id, state_event(JobState.QUEUED, "queued"), now)
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
                self._append(c, job_id, state_event(JobState.RUNNING, message), now)
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
                self._append(c, job_id, payload, now)
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
            self._append(c, job_id, state_event(JobState.QUEUED, message), now)
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

    # --- progress events --------------------------------------------------------------

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
            sequence = self._append(c, job_id, event_to_json(event), now)
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

    # --- workers ----------------------------------------------------------------------

    def heartbeat_worker(self, worker_id: str, pid: int, host: str, info: dict[str, Any]) -> None:
        now = self._clock()
        with self._tx(write=True) as c:
            c.execute(
                "INSERT INTO workers (worker_id, pid, host, last_heartbeat, info_json)"
                " VALUES (?, ?, ?, ?, ?) ON CONFLICT (worker_id) DO UPDATE SET"
                " pid = excluded.pid, host = excluded.host,"
                " last_heartbeat = excluded.last_heartbeat, info_json = excluded.info_json",
                (worker_id, pid, host, now, dumps(info)),
            )

    def list_workers(self) -> list[WorkerInfo]:
        with self._tx(write=False) as c:
            rows = c.execute(
                "SELECT worker_id, pid, host, last_heartbeat, info_json FROM workers"
                " ORDER BY worker_id"
            ).fetchall()
        return [WorkerInfo(w, p, h, t, json.loads(i)) for w, p, h, t, i in rows]

    # --- registry metadata ------------------------------------------------------------

    @staticmethod
    def _aliases(c: sqlite3.Connection, tenant: str, name: str, version: int) -> list[str]:
        rows = c.execute(
            "SELECT alias FROM model_aliases WHERE tenant = ? AND name = ? AND version = ?",
            (tenant, name, version),
        ).fetchall()
        return [r[0] for r in rows]

    @staticmethod
    def _model_exists(c: sqlite3.Connection, tenant: str, name: str) -> bool:
        row = c.execute(
            "SELECT 1 FROM model_versions WHERE tenant = ? AND name = ? LIMIT 1", (tenant, name)
        ).fetchone()
        return row is not None

    def _get_version(
        self, c: sqlite3.Connection, tenant: str, name: str, version: int
    ) -> ModelVersion:
        row = c.execute(
            f"SELECT {MODEL_COLUMNS} FROM model_versions"
            " WHERE tenant = ? AND name = ? AND version = ?",
            (tenant, name, version),
        ).fetchone()
        if row is None:
            if self._model_exists(c, tenant, name):
                raise NotFound(f"model {name!r} has no version {version}")
            raise NotFound(f"model {name!r} not found")
        return model_from_row(row, self._aliases(c, tenant, name, version))

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
        now = self._clock()
        with self._tx(write=True) as c:
            (latest,) = c.execute(
                "SELECT COALESCE(MAX(version), 0) FROM model_versions"
                " WHERE tenant = ? AND name = ?",
                (tenant, name),
            ).fetchone()
            version = latest + 1
            # Through JSON once: the card returned equals the one read back later, and a card
            # that is not JSON fails here, before anything is published.
            stored_card = json.loads(
                dumps(
                    {**card, "name": name, "version": version, "sha256": sha256, "create_time": now}
                )
            )
            mv = ModelVersion(
                name=name,
                version=version,
                create_time=now,
                job_id=job_id,
                backbone=backbone,
                labels=tuple(labels),
                sha256=sha256,
                card=stored_card,
                artifact_dir=artifact_dir,
                metrics=metrics,
                tenant=tenant,
            )
            if publish is not None:
                # Under the write lock: no other registration of `name` can run until we
                # commit, so `version` is ours and anything already at its place is debris
                # of a registration that crashed before its commit.
                mv = dataclasses.replace(mv, artifact_dir=publish(mv))
            c.execute(
                f"INSERT INTO model_versions ({MODEL_COLUMNS})"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    name,
                    version,
                    now,
                    job_id,
                    backbone,
                    dumps(list(mv.labels)),
                    sha256,
                    dumps(mv.card),
                    mv.artifact_dir,
                    metrics_to_json(metrics),
                    tenant,
                ),
            )
            return mv

    def get_model_version(
        self, name: str, version: int, tenant: str = DEFAULT_TENANT
    ) -> ModelVersion:
        with self._tx(write=False) as c:
            return self._get_version(c, tenant, name, version)

    def resolve_model(self, ref: ModelRef) -> ModelVersion:
        tenant, name = ref.tenant, ref.name
        with self._tx(write=False) as c:
            if ref.version:
                return self._get_version(c, tenant, name, ref.version)
            if ref.alias:
                row = c.execute(
                    "SELECT version FROM model_aliases WHERE tenant = ? AND name = ? AND alias = ?",
                    (tenant, name, ref.alias),
                ).fetchone()
                if row is None:
                    if self._model_exists(c, tenant, name):
                        raise NotFound(f"model {name!r} has no alias {ref.alias!r}")
                    raise NotFound(f"model {name!r} not found")
                return self._get_version(c, tenant, name, row[0])
            row = c.execute(
                "SELECT MAX(version) FROM model_versions WHERE tenant = ? AND name = ?",
                (tenant, name),
            ).fetchone()
            if row[0] is None:
                raise NotFound(f"model {name!r} not found")
            return self._get_version(c, tenant, name, row[0])

    def list_models(
        self, name_prefix: str = "", tenant: str | None = None
    ) -> dict[str, list[ModelVersion]]:
        where = "WHERE substr(name, 1, ?) = ?"
        args: tuple[object, ...] = (len(name_prefix), name_prefix)
        if tenant is not None:
            where += " AND tenant = ?"
            args += (tenant,)
        aliases: dict[tuple[str, str, int], list[str]] = {}
        out: dict[str, list[ModelVersion]] = {}
        with self._tx(write=False) as c:
            for owner, name, version, alias in c.execute(
                f"SELECT tenant, name, version, alias FROM model_aliases {where}", args
            ):
                aliases.setdefault((owner, name, version), []).append(alias)
            for row in c.execute(
                f"SELECT {MODEL_COLUMNS} FROM model_versions {where}"
                " ORDER BY name, tenant, version",
                args,
            ):
                mv = model_from_row(row, [])
                mv.aliases = sorted(aliases.get((mv.tenant, mv.name, mv.version), []))
                out.setdefault(mv.name, []).append(mv)
        return out

    def list_model_versions_page(
        self,
        name_prefix: str = "",
        tenant: str | None = None,
        limit: int = 100,
        after: tuple[str, str, int] | None = None,
    ) -> tuple[list[ModelVersion], tuple[str, str, int] | None]:
        where = "WHERE substr(v.name, 1, ?) = ?"
        args: tuple[object, ...] = (len(name_prefix), name_prefix)
        if tenant is not None:
            where += " AND v.tenant = ?"
            args += (tenant,)
        if after is not None:
            where += " AND (v.name, v.tenant, v.version) > (?, ?, ?)"
            args += after
        columns = ", ".join(f"v.{c.strip()}" for c in MODEL_COLUMNS.split(","))
        with self._tx(write=False) as c:
            rows = c.execute(
                f"SELECT {columns} FROM model_versions v {where}"
                " ORDER BY v.name, v.tenant, v.version LIMIT ?",
                (*args, limit + 1),
            ).fetchall()
            versions = [model_from_row(row, []) for row in rows[:limit]]
            for mv in versions:
                mv.aliases = sorted(
                    a
                    for (a,) in c.execute(
                        "SELECT alias FROM model_aliases"
                        " WHERE tenant = ? AND name = ? AND version = ?",
                        (mv.tenant, mv.name, mv.version),
                    )
                )
        last = versions[-1] if len(rows) > limit else None
        return versions, (None if last is None else (last.name, last.tenant, last.version))

    def set_alias(
        self, name: str, alias: str, version: int, tenant: str = DEFAULT_TENANT
    ) -> ModelVersion:
        if not alias:
            raise InvalidArgument.of("alias", "must not be empty")
        with self._tx(write=True) as c:
            self._get_version(c, tenant, name, version)  # NotFound names what is missing
            c.execute(
                "INSERT INTO model_aliases (tenant, name, alias, version) VALUES (?, ?, ?, ?)"
                " ON CONFLICT (tenant, name, alias) DO UPDATE SET version = excluded.version",
                (tenant, name, alias, version),
            )
            return self._get_version(c, tenant, name, version)

    def count_model_versions(self) -> int:
        with self._tx(write=False) as c:
            (n,) = c.execute("SELECT COUNT(*) FROM model_versions").fetchone()
        return int(n)

    # --- uploads ----------------------------------------------------------------------

    # An upload's last use counts the end of the last job that trained on it too.
    _UPLOAD_SELECT = (
        "SELECT u.dataset_id, u.path, u.size_bytes, u.fingerprint, u.create_time, u.tenant,"
        " u.filename, u.extracted_bytes, MAX(u.last_used, COALESCE((SELECT MAX(j.end_time)"
        " FROM jobs j WHERE j.dataset_id = u.dataset_id), 0)) AS last_used FROM uploads u"
    )

    @classmethod
    def _get_upload(cls, c: sqlite3.Connection, dataset_id: str, tenant: str | None) -> UploadInfo:
        row = c.execute(f"{cls._UPLOAD_SELECT} WHERE u.dataset_id = ?", (dataset_id,)).fetchone()
        if row is None or (tenant is not None and row[5] != tenant):
            raise NotFound(f"dataset {dataset_id!r} not found")  # the same words for both
        return UploadInfo(*row)

    @staticmethod
    def _upload_usage(c: sqlite3.Connection, tenant: str | None) -> int:
        where, args = _filters(("tenant", tenant))
        (used,) = c.execute(
            f"SELECT COALESCE(SUM(size_bytes + extracted_bytes), 0) FROM uploads{where}", args
        ).fetchone()
        return int(used)

    @staticmethod
    def _upload_user(c: sqlite3.Connection, dataset_id: str) -> str:
        """What uses the upload now ("" if nothing): a queued or running job, an Advise or
        the upload's own check (a task whose request names it)."""
        active = (int(JobState.QUEUED), int(JobState.RUNNING))
        row = c.execute(
            "SELECT job_id, state FROM jobs WHERE dataset_id = ? AND state IN (?, ?)"
            " ORDER BY seq LIMIT 1",
            (dataset_id, *active),
        ).fetchone()
        if row is not None:
            return f"job {row[0]} ({JobState(row[1]).name.lower()})"
        row = c.execute(
            "SELECT kind FROM tasks WHERE state IN (?, ?) AND instr(request_json, ?) > 0 LIMIT 1",
            (*active, f'"{dataset_id}"'),
        ).fetchone()
        if row is None:
            return ""
        return "its upload check" if row[0] == TaskKind.CHECK_UPLOAD else "an Advise in progress"

    @staticmethod
    def _check_quota(used: int, more: int, quota_bytes: int) -> None:
        if quota_bytes and used + more > quota_bytes:
            raise ResourceExhausted(
                f"the upload passes this tenant's upload quota: its uploads store {used} of"
                f" {quota_bytes} bytes (upload_quota_bytes) and this one needs {more} more;"
                " delete unused ones (graft datasets delete) or ask for a larger quota"
            )

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
        now = self._clock()
        with self._tx(write=True) as c:
            row = c.execute(
                "SELECT fingerprint, tenant FROM uploads WHERE dataset_id = ?", (dataset_id,)
            ).fetchone()
            if row is not None:
                if tuple(row) == (fingerprint, tenant):
                    return
                raise AlreadyExists(f"dataset {dataset_id!r} exists with other contents")
            self._check_quota(self._upload_usage(c, tenant), size_bytes, quota_bytes)
            c.execute(
                "INSERT INTO uploads (dataset_id, path, size_bytes, fingerprint, create_time,"
                " tenant, filename, last_used) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (dataset_id, path, size_bytes, fingerprint, now, tenant, filename, now),
            )

    def get_upload(self, dataset_id: str, tenant: str | None = None) -> UploadInfo:
        with self._tx(write=False) as c:
            return self._get_upload(c, dataset_id, tenant)

    def set_upload_extracted(
        self, dataset_id: str, extracted_bytes: int, quota_bytes: int = 0
    ) -> UploadInfo:
        with self._tx(write=True) as c:
            upload = self._get_upload(c, dataset_id, None)
            others = self._upload_usage(c, upload.tenant) - upload.extracted_bytes
            self._check_quota(others, extracted_bytes, quota_bytes)
            c.execute(
                "UPDATE uploads SET extracted_bytes = ? WHERE dataset_id = ?",
                (extracted_bytes, dataset_id),
            )
            return self._get_upload(c, dataset_id, None)

    def touch_upload(self, dataset_id: str) -> None:
        now = self._clock()
        with self._tx(write=True) as c:
            c.execute(
                "UPDATE uploads SET last_used = MAX(last_used, ?) WHERE dataset_id = ?",
                (now, dataset_id),
            )

    def list_uploads(self, tenant: str | None = None, limit: int = 0) -> list[UploadInfo]:
        where = "" if tenant is None else " WHERE u.tenant = ?"
        with self._tx(write=False) as c:
            rows = c.execute(
                f"{self._UPLOAD_SELECT}{where} ORDER BY u.create_time DESC, u.dataset_id LIMIT ?",
                (*(() if tenant is None else (tenant,)), limit or -1),
            ).fetchall()
        return [UploadInfo(*row) for row in rows]

    def upload_usage(self, tenant: str | None = None) -> int:
        with self._tx(write=False) as c:
            return self._upload_usage(c, tenant)

    def delete_upload(
        self, dataset_id: str, tenant: str | None = None, *, force: bool = False
    ) -> UploadInfo:
        with self._tx(write=True) as c:
            upload = self._get_upload(c, dataset_id, tenant)
            user = "" if force else self._upload_user(c, dataset_id)
            if user:
                raise FailedPrecondition(
                    f"dataset {dataset_id!r} is in use by {user}: cancel it or wait for it"
                    " to end, then delete the dataset"
                )
            c.execute("DELETE FROM uploads WHERE dataset_id = ?", (dataset_id,))
            return upload

    def expire_uploads(self, unused_before: float) -> list[UploadInfo]:
        expired = []
        with self._tx(write=True) as c:
            rows = c.execute(
                f"SELECT * FROM ({self._UPLOAD_SELECT}) WHERE last_used < ? ORDER BY create_time",
                (unused_before,),
            ).fetchall()
            for row in rows:
                upload = UploadInfo(*row)
                if self._upload_user(c, upload.dataset_id):
                    continue
                c.execute("DELETE FROM uploads WHERE dataset_id = ?", (upload.dataset_id,))
                expired.append(upload)
        return expired

    def active_datasets(self) -> list[DatasetRef]:
        with self._tx(write=False) as c:
            rows = c.execute(
                "SELECT DISTINCT dataset_uri, dataset_id FROM jobs WHERE state IN (?, ?)",
                (int(JobState.QUEUED), int(JobState.RUNNING)),
            ).fetchall()
        return [DatasetRef(uri=uri, dataset_id=dataset_id) for uri, dataset_id in rows]

    # --- API keys ---------------------------------------------------------------------

    _KEY_COLUMNS = "key_id, tenant, admin, name, create_time, revoke_time"

    @staticmethod
    def _key_from_row(row: tuple[Any, ...]) -> ApiKey:
        key_id, tenant, admin, name, create_time, revoke_time = row
        return ApiKey(key_id, tenant, bool(admin), name, create_time, revoke_time)

    def add_api_key(
        self, key_id: str, token_hash: str, tenant: str, *, admin: bool = False, name: str = ""
    ) -> ApiKey:
        now = self._clock()
        with self._tx(write=True) as c:
            try:
                c.execute(
                    "INSERT INTO api_keys (key_id, token_hash, tenant, admin, name, create_time)"
                    " VALUES (?, ?, ?, ?, ?, ?)",
                    (key_id, token_hash, tenant, int(admin), name, now),
                )
            except sqlite3.IntegrityError:
                raise AlreadyExists(f"API key {key_id!r} (or its token) exists already") from None
        return ApiKey(key_id, tenant, admin, name, now)

    def api_key_by_hash(self, token_hash: str) -> ApiKey:
        with self._tx(write=False) as c:
            row = c.execute(
                f"SELECT {self._KEY_COLUMNS} FROM api_keys WHERE token_hash = ?", (token_hash,)
            ).fetchone()
        if row is None:
            raise NotFound("no such API key")
        return self._key_from_row(row)

    def list_api_keys(self) -> list[ApiKey]:
        with self._tx(write=False) as c:
            rows = c.execute(
                f"SELECT {self._KEY_COLUMNS} FROM api_keys ORDER BY create_time, key_id"
            ).fetchall()
        return [self._key_from_row(r) for r in rows]

    def revoke_api_key(self, key_id: str) -> ApiKey:
        now = self._clock()
        with self._tx(write=True) as c:
            c.execute(
                "UPDATE api_keys SET revoke_time = ? WHERE key_id = ? AND revoke_time IS NULL",
                (now, key_id),
            )
            row = c.execute(
                f"SELECT {self._KEY_COLUMNS} FROM api_keys WHERE key_id = ?", (key_id,)
            ).fetchone()
        if row is None:
            raise NotFound(f"API key {key_id!r} not found")
        return self._key_from_row(row)

    # --- tasks ------------------------------------------------------------------------

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
