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

The store is one class composed of parts, one module each: `base` (connections,
transactions, schema and migrations, close), `jobs` (jobs and leases), `events` (their
progress events), `tasks`,
`models` (versions and aliases), `uploads`, `workers` and `keys`.
"""

from __future__ import annotations

from graft.store.sqlite.base import SqliteBase
from graft.store.sqlite.events import EventsMixin
from graft.store.sqlite.jobs import JobsMixin
from graft.store.sqlite.keys import KeysMixin
from graft.store.sqlite.models import ModelsMixin
from graft.store.sqlite.schema import _MIGRATIONS, _SCHEMA, SCHEMA_VERSION
from graft.store.sqlite.tasks import TASK_RETENTION_SECONDS, TasksMixin
from graft.store.sqlite.uploads import UploadsMixin
from graft.store.sqlite.workers import WorkersMixin

__all__ = [
    "SCHEMA_VERSION",
    "TASK_RETENTION_SECONDS",
    "_MIGRATIONS",
    "_SCHEMA",
    "SqliteJobStore",
]


class SqliteJobStore(
    JobsMixin,
    EventsMixin,
    TasksMixin,
    ModelsMixin,
    UploadsMixin,
    WorkersMixin,
    KeysMixin,
    SqliteBase,
):
    """`JobStore` on one SQLite file. Safe to use from many threads and processes.

    `path` must be a file (not ":memory:": each thread has its own connection).
    `clock` gives every time the store records, so tests can move time instead of sleeping.
    """

    def __enter__(self) -> SqliteJobStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
