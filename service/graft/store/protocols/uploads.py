"""`UploadStore`: datasets uploaded through UploadDataset, and `UploadRecord`, what the
store keeps of one."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from graft.domain import DEFAULT_TENANT, DatasetRef


@dataclass(frozen=True)
class UploadRecord:
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

    def get_upload(self, dataset_id: str, tenant: str | None = None) -> UploadRecord:
        """The upload, or NotFound (also when it belongs to another tenant than `tenant`)."""
        ...

    def set_upload_extracted(
        self, dataset_id: str, extracted_bytes: int, quota_bytes: int = 0
    ) -> UploadRecord:
        """Record the size of the upload's extracted copy. With `quota_bytes` (0: none),
        ResourceExhausted (nothing changed) if its tenant's uploads would then store more.
        NotFound for an unknown id."""
        ...

    def touch_upload(self, dataset_id: str) -> None:
        """The upload was used now (a new job or Advise names it); unknown ids are ignored."""
        ...

    def list_uploads(self, tenant: str | None = None, limit: int = 0) -> list[UploadRecord]:
        """`tenant`'s uploads (None: every tenant's), newest first; at most `limit` (0: all)."""
        ...

    def upload_usage(self, tenant: str | None = None) -> int:
        """Bytes `tenant`'s uploads store, archives and extracted copies (None: all)."""
        ...

    def delete_upload(
        self, dataset_id: str, tenant: str | None = None, *, force: bool = False
    ) -> UploadRecord:
        """Forget the upload and return what it was (its files are the caller's to remove).
        NotFound as `get_upload`; FailedPrecondition naming the user while a queued or
        running job, or a queued or running task (an Advise, its own check), names it,
        unless `force` (the upload's own failed check cleaning up)."""
        ...

    def expire_uploads(self, unused_before: float) -> list[UploadRecord]:
        """Forget every upload last used before `unused_before` that nothing uses (as
        `delete_upload` judges it), in one transaction; returns them (their files are the
        caller's to remove)."""
        ...

    def active_datasets(self) -> list[DatasetRef]:
        """The datasets of queued and running jobs (each distinct one once)."""
        ...
