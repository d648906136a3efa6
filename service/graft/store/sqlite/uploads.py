"""Uploaded datasets: records, quotas, expiry."""

from __future__ import annotations

import sqlite3

from graft.domain import DEFAULT_TENANT, DatasetRef, JobState, TaskKind
from graft.errors import AlreadyExists, FailedPrecondition, NotFound, ResourceExhausted
from graft.store.protocols.uploads import UploadRecord
from graft.store.sqlite.base import SqliteBase, _filters


class UploadsMixin(SqliteBase):
    """Uploaded datasets: records, quotas, expiry."""

    # An upload's last use counts the end of the last job that trained on it too.
    _UPLOAD_SELECT = (
        "SELECT u.dataset_id, u.path, u.size_bytes, u.fingerprint, u.create_time, u.tenant,"
        " u.filename, u.extracted_bytes, MAX(u.last_used, COALESCE((SELECT MAX(j.end_time)"
        " FROM jobs j WHERE j.dataset_id = u.dataset_id), 0)) AS last_used FROM uploads u"
    )

    @classmethod
    def _get_upload(
        cls, c: sqlite3.Connection, dataset_id: str, tenant: str | None
    ) -> UploadRecord:
        row = c.execute(f"{cls._UPLOAD_SELECT} WHERE u.dataset_id = ?", (dataset_id,)).fetchone()
        if row is None or (tenant is not None and row[5] != tenant):
            raise NotFound(f"dataset {dataset_id!r} not found")  # the same words for both
        return UploadRecord(*row)

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

    def get_upload(self, dataset_id: str, tenant: str | None = None) -> UploadRecord:
        with self._tx(write=False) as c:
            return self._get_upload(c, dataset_id, tenant)

    def set_upload_extracted(
        self, dataset_id: str, extracted_bytes: int, quota_bytes: int = 0
    ) -> UploadRecord:
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

    def list_uploads(self, tenant: str | None = None, limit: int = 0) -> list[UploadRecord]:
        where = "" if tenant is None else " WHERE u.tenant = ?"
        with self._tx(write=False) as c:
            rows = c.execute(
                f"{self._UPLOAD_SELECT}{where} ORDER BY u.create_time DESC, u.dataset_id LIMIT ?",
                (*(() if tenant is None else (tenant,)), limit or -1),
            ).fetchall()
        return [UploadRecord(*row) for row in rows]

    def upload_usage(self, tenant: str | None = None) -> int:
        with self._tx(write=False) as c:
            return self._upload_usage(c, tenant)

    def delete_upload(
        self, dataset_id: str, tenant: str | None = None, *, force: bool = False
    ) -> UploadRecord:
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

    def expire_uploads(self, unused_before: float) -> list[UploadRecord]:
        expired = []
        with self._tx(write=True) as c:
            rows = c.execute(
                f"SELECT * FROM ({self._UPLOAD_SELECT}) WHERE last_used < ? ORDER BY create_time",
                (unused_before,),
            ).fetchall()
            for row in rows:
                upload = UploadRecord(*row)
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
