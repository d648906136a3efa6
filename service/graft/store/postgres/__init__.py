"""The PostgreSQL job store: one database shared by the API server and any number of
workers on any number of hosts (docs/SCALING.md has the reasons).

- **Driver**: psycopg 3 (libpq), with server-side parameter binding, and its
  `psycopg_pool.ConnectionPool` per store object: connections are checked before use (a
  dead one is replaced, not handed out) and opened with a connect timeout, so an
  unreachable server is `Unavailable` within seconds, not a hang.
- **Transactions**: READ COMMITTED, one short explicit transaction per call (`_tx`). A
  write locks the rows it reads to decide (`FOR NO KEY UPDATE`); claims add
  `SKIP LOCKED`, so workers claiming at once take different jobs without waiting on each
  other. Where no row exists yet to lock (the next model version, an active-jobs limit, a
  tenant's upload quota), a transaction-level advisory lock on the name serialises them.
- **Events**: appending bumps the job's `last_sequence` with an UPDATE, whose row lock
  queues appends to one job, from any process: sequences stay contiguous.
- **Clock**: times are the database's (`graft_now()`, the transaction's `now()` in epoch
  seconds), so leases expire by one clock however far the hosts' clocks drift. A store
  given `clock=` (the contract tests' FakeClock) sets that clock's time as the
  transaction's `graft.now`; `graft_now()` returns it instead. Same SQL either way.
- **Notifications**: every appended event (so every change of a job's state) and every
  change of a task's state sends `NOTIFY graft_events, '<id>'`, delivered at commit.
  `subscribe_changes` LISTENs on a dedicated connection (`listener`); the API's watcher
  polls at once when told, and still at its interval.
- **Schema**: versioned migrations applied at start under an advisory lock (`schema`).

The store is one class composed of parts, one module each, as the SQLite store is: `base`
(pool, transactions, clock, notify, lifecycle), `schema`, `listener`, `jobs`, `events`,
`tasks`, `models`, `uploads`, `workers` and `keys`.
"""

from __future__ import annotations

from graft.store.postgres.base import CHANNEL, PostgresBase
from graft.store.postgres.events import EventsMixin
from graft.store.postgres.jobs import JobsMixin
from graft.store.postgres.keys import KeysMixin
from graft.store.postgres.models import ModelsMixin
from graft.store.postgres.schema import MIGRATIONS, SCHEMA_VERSION
from graft.store.postgres.tasks import TASK_RETENTION_SECONDS, TasksMixin
from graft.store.postgres.uploads import UploadsMixin
from graft.store.postgres.workers import WorkersMixin

__all__ = [
    "CHANNEL",
    "MIGRATIONS",
    "SCHEMA_VERSION",
    "TASK_RETENTION_SECONDS",
    "PostgresJobStore",
]


class PostgresJobStore(
    JobsMixin,
    EventsMixin,
    TasksMixin,
    ModelsMixin,
    UploadsMixin,
    WorkersMixin,
    KeysMixin,
    PostgresBase,
):
    """`JobStore` on a PostgreSQL database named by a `postgresql://` URL (libpq's: host,
    port, user, database, and parameters such as `sslmode`; the password is best left to
    PGPASSWORD or ~/.pgpass). Safe to use from many threads, processes and hosts.

    Opening it applies the schema's migrations (Unavailable when the server cannot be
    reached, FailedPrecondition when the database's schema is newer than this code).
    `clock`: None uses the database's clock; tests pass one to move time by hand.
    """

    def __enter__(self) -> PostgresJobStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
