"""The job store: jobs, leases, progress events, workers, uploads and registry metadata.

`open_store(config)` is how the server and the workers get one; everything else talks to
the `JobStore` protocol, the sum of the parts' protocols (`graft.store.protocol`).
"""

from __future__ import annotations

from graft.config import Config
from graft.store.protocol import (
    ApiKey,
    JobQueueStore,
    JobStore,
    KeyStore,
    ModelStore,
    PublishArtifact,
    StoreLifecycle,
    TaskStore,
    UploadInfo,
    UploadStore,
    WorkerInfo,
    WorkerStore,
)
from graft.store.sqlite import SqliteJobStore

__all__ = [
    "ApiKey",
    "JobQueueStore",
    "JobStore",
    "KeyStore",
    "ModelStore",
    "PublishArtifact",
    "SqliteJobStore",
    "StoreLifecycle",
    "TaskStore",
    "UploadInfo",
    "UploadStore",
    "WorkerInfo",
    "WorkerStore",
    "open_store",
]


def open_store(config: Config) -> JobStore:
    """The store `config` names: SQLite at `config.store_path` (its folder created)."""
    path = config.store_path
    path.parent.mkdir(parents=True, exist_ok=True)
    return SqliteJobStore(path)
