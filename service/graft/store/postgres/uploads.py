"""Uploaded datasets: records, quotas, expiry."""

from __future__ import annotations

import psycopg

from graft.domain import DEFAULT_TENANT, DatasetRef, JobState, TaskKind
from graft.errors import AlreadyExists, FailedPrecondition, NotFound, ResourceExhausted
from graft.store.postgres.base import Conn, PostgresBase, _filters
from graft.store.protocols.uploads import UploadRecord

_ACTIVE = [int(JobState.QUEUED), int(JobState.RUNNING)]


class UploadsMixin(PostgresBase):
    """Uploaded datasets: records, quotas, expiry. A tenant's quota is checked under an
    advisory lock of that tenant, so two uploads cannot both fit in the last free bytes."""

    # An upload's last use counts the end of the last job that trained on it too.
    _UPLOAD_SELECT = (
        "SELECT u.dataset_id, u.path, u.size_bytes, u.fingerprint, u.create_time, u.tenant,"
        " u.filename, u.extracted_bytes, GREATEST(u.last_used, COALESCE((SELECT"
        " MAX(j.end_time) FROM jobs j WHERE j.dataset_id = u.dataset_id), 0)) AS last_used"
        " FROM uploads u"
    )

    @classmethod
    def _get_upload(cls, c: Conn, dataset_id: str, tenant: str | None) -> UploadRecord:
        row = c.execute(f"{cls._UPLOAD_SELECT} WHERE u.dataset_id = %s", (dataset_id,)).fetchone()
        if row is None or (tenant is not None and row[5] != tenant):
            raise NotFound(f"dataset {dataset_id!r} not found")  # the same words for both
        return UploadRecord(*row)

    @staticmethod
    def _upload_usage(c: Conn, tenant: str | None) -> int:
        where, args = _filters(("tenant", tenant))
        row = c.execute(
            f"SELECT COALESCE(SUM(size_bytes + extracted_bytes), 0) FROM uploads{where}", args
        ).fetchone()
        return int(row[0]) if row else 0

    @staticmethod
    def _upload_user(c: Conn, dataset_id: str) -> str:
        """What uses the upload now ("" if nothing): a queued or running job, an Advise or
        the upload's own check (a task whose request names it)."""
        row = c.execute(
            "SELECT job_id, state FROM jobs WHERE dataset_id = %s AND state = ANY(%s)"
            " ORDER BY seq LIMIT 1",
            (dataset_id, _ACTIVE),
        ).fetchone()
        if row is not None:
            return f"job {row[0]} ({JobState(row[1]).name.lower()})"
        row = c.execute(
            "SELECT kind FROM tasks WHERE state = ANY(%s) AND strpos(request_json, %s) > 0 LIMIT 1",
            (_ACTIVE, f'"{dataset_id}"'),
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
        try:
            with self._tx() as c:
                self._lock(c, "upload-quota", tenant)
                if self._known_upload(c, dataset_id, fingerprint, tenant):
                    return
                self._check_quota(self._upload_usage(c, tenant), size_bytes, quota_bytes)
                c.execute(
                    "INSERT INTO uploads (dataset_id, path, size_bytes, fingerprint,"
                    " create_time, tenant, filename, last_used)"
                    " VALUES (%s, %s, %s, %s, graft_now(), %s, %s, graft_now())",
                    (dataset_id, path, size_bytes, fingerprint, tenant, filename),
                )
        except psycopg.errors.UniqueViolation:  # another tenant took the id meanwhile
            raise AlreadyExists(f"dataset {dataset_id!r} exists with other contents") from None

    @staticmethod
    def _known_upload(c: Conn, dataset_id: str, fingerprint: str, tenant: str) -> bool:
        """True if the upload is recorded already, with these contents; AlreadyExists if
        its id is taken by other contents; False if it is new."""
        row = c.execute(
            "SELECT fingerprint, tenant FROM uploads WHERE dataset_id = %s", (dataset_id,)
        ).fetchone()
        if row is None:
            return False
        if tuple(row) == (fingerprint, tenant):
            return True
        raise AlreadyExists(f"dataset {dataset_id!r} exists with other contents")

    def get_upload(self, dataset_id: str, tenant: str | None = None) -> UploadRecord:
        with self._tx() as c:
            return self._get_upload(c, dataset_id, tenant)

    def set_upload_extracted(
        self, dataset_id: str, extracted_bytes: int, quota_bytes: int = 0
    ) -> UploadRecord:
        with self._tx() as c:
            tenant = self._get_upload(c, dataset_id, None).tenant
            self._lock(c, "upload-quota", tenant)
            upload = self._get_upload(c, dataset_id, None)  # as it is now that we hold the lock
            others = self._upload_usage(c, upload.tenant) - upload.extracted_bytes
            self._check_quota(others, extracted_bytes, quota_bytes)
            c.execute(
                "UPDATE uploads SET extracted_bytes = %s WHERE dataset_id = %s",
                (extracted_bytes, dataset_id),
            )
            return self._get_upload(c, dataset_id, None)

    def touch_upload(self, dataset_id: str) -> None:
        with self._tx() as c:
            c.execute(
                "UPDATE uploads SET last_used = GREATEST(last_used, graft_now())"
                " WHERE dataset_id = %s",
                (dataset_id,),
            )

    def list_uploads(self, tenant: str | None = None, limit: int = 0) -> list[UploadRecord]:
        where = "" if tenant is None else " WHERE u.tenant = %s"
        with self._tx() as c:
            rows = c.execute(
                f"{self._UPLOAD_SELECT}{where} ORDER BY u.create_time DESC, u.dataset_id LIMIT %s",
                (*(() if tenant is None else (tenant,)), limit or None),
            ).fetchall()
        return [UploadRecord(*row) for row in rows]

    def upload_usage(self, tenant: str | None = None) -> int:
        with self._tx() as c:
            return self._upload_usage(c, tenant)

    def delete_upload(
        self, dataset_id: str, tenant: str | None = None, *, force: bool = False
    ) -> UploadRecord:
        with self._tx() as c:
            upload = self._get_upload(c, dataset_id, tenant)
            user = "" if force else self._upload_user(c, dataset_id)
            if user:
                raise FailedPrecondition(
                    f"dataset {dataset_id!r} is in use by {user}: cancel it or wait for it"
                    " to end, then delete the dataset"
                )
            cur = c.execute("DELETE FROM uploads WHERE dataset_id = %s", (dataset_id,))
            if cur.rowcount == 0:  # another call deleted it meanwhile
                raise NotFound(f"dataset {dataset_id!r} not found")
            return upload

    def expire_uploads(self, unused_before: float) -> list[UploadRecord]:
        expired = []
        with self._tx() as c:
            rows = c.execute(
                f"SELECT * FROM ({self._UPLOAD_SELECT}) AS u WHERE last_used < %s"
                " ORDER BY create_time",
                (unused_before,),
            ).fetchall()
            for row in rows:
                upload = UploadRecord(*row)
                if self._upload_user(c, upload.dataset_id):
                    continue
                cur = c.execute("DELETE FROM uploads WHERE dataset_id = %s", (upload.dataset_id,))
                if cur.rowcount:  # not deleted meanwhile by another call
                    expired.append(upload)
        return expired

    def active_datasets(self) -> list[DatasetRef]:
        with self._tx() as c:
            rows = c.execute(
                "SELECT DISTINCT dataset_uri, dataset_id FROM jobs WHERE state = ANY(%s)",
                (_ACTIVE,),
            ).fetchall()
        return [DatasetRef(uri=uri, dataset_id=dataset_id) for uri, dataset_id in rows]
