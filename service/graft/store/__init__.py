"""The job store: jobs, leases, progress events, workers, uploads and registry metadata.

`open_store(config)` is how the server and the workers get one; everything else talks to
the `JobStore` protocol, the sum of the parts' protocols (`graft.store.protocols`, one
module each). Two implementations: SQLite (`graft.store.sqlite`, the embedded default)
and PostgreSQL (`graft.store.postgres`, for several hosts; imported only when used, so
the SQLite path never loads its driver).
"""

from __future__ import annotations

from graft.config import Config
from graft.store.protocols import JobStore
from graft.store.protocols.changes import ChangeCallback, ChangeFeed
from graft.store.protocols.jobs import JobQueueStore
from graft.store.protocols.keys import ApiKey, KeyStore
from graft.store.protocols.lifecycle import StoreLifecycle
from graft.store.protocols.models import ModelStore, PublishArtifact
from graft.store.protocols.tasks import TaskStore
from graft.store.protocols.uploads import UploadRecord, UploadStore
from graft.store.protocols.workers import WorkerInfo, WorkerStore
from graft.store.sqlite import SqliteJobStore

__all__ = [
    "ApiKey",
    "ChangeCallback",
    "ChangeFeed",
    "JobQueueStore",
    "JobStore",
    "KeyStore",
    "ModelStore",
    "PublishArtifact",
    "SqliteJobStore",
    "StoreLifecycle",
    "TaskStore",
    "UploadRecord",
    "UploadStore",
    "WorkerInfo",
    "WorkerStore",
    "open_store",
]


def open_store(config: Config) -> JobStore:
    """The store `config.store_url` names: "" is SQLite at `config.store_path` (its folder
    created), a postgresql:// URL that PostgreSQL database (its schema applied)."""
    url = config.store_url
    if not url:
        path = config.store_path
        path.parent.mkdir(parents=True, exist_ok=True)
        return SqliteJobStore(path)
    from graft.store.postgres import PostgresJobStore  # its driver, only when used

    return PostgresJobStore(url)  # ValueError for anything but a postgresql:// URL
