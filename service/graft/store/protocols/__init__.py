"""The job store's interface: the only channel between the API server and the workers.

Every implementation (SQLite, PostgreSQL) passes the one contract suite in
`tests/unit/test_store.py`. Times are epoch seconds (`time.time()` floats) from the
store's clock: the host's (SQLite) or the database server's (PostgreSQL), or one the tests
inject. Errors are the typed ones of `graft.errors`: `NotFound` for an
unknown job/model/version/alias/upload, `FailedPrecondition` for a transition the job's
state does not allow, `Unavailable` when the database cannot be reached or stays locked.

Tenants: jobs, model versions (with their aliases) and uploads each belong to one tenant
(`graft.domain.DEFAULT_TENANT` unless said otherwise). Model names are per tenant. Where a
method takes `tenant: str | None`, a string confines it to that tenant's rows (another
tenant's job or upload is NotFound, exactly like one that does not exist) and None means
every tenant (workers, admins); the API passes the caller's scope (graft.api.auth).

The interface comes in parts, one protocol and module each, so that a second backend can
implement them one at a time: `JobQueueStore` (`jobs`: jobs, leases, progress events),
`TaskStore` (`tasks`), `ModelStore` (`models`: versions and aliases), `UploadStore`
(`uploads`), `WorkerStore` (`workers`), `KeyStore` (`keys`), `ChangeFeed` (`changes`:
notifications of changes, so that pollers poll sooner) and `StoreLifecycle`
(`lifecycle`); the records a part returns live beside it. `JobStore` is all of them
together: what a backend provides and what the server and the workers hold.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from graft.store.protocols.changes import ChangeFeed
from graft.store.protocols.jobs import JobQueueStore
from graft.store.protocols.keys import KeyStore
from graft.store.protocols.lifecycle import StoreLifecycle
from graft.store.protocols.models import ModelStore
from graft.store.protocols.tasks import TaskStore
from graft.store.protocols.uploads import UploadStore
from graft.store.protocols.workers import WorkerStore


@runtime_checkable
class JobStore(
    JobQueueStore,
    TaskStore,
    ModelStore,
    UploadStore,
    WorkerStore,
    KeyStore,
    ChangeFeed,
    StoreLifecycle,
    Protocol,
):
    """The whole store: every part above, on one database. What the server and the
    workers hold (`graft.store.open_store`); a backend implements it part by part."""
