"""API keys, by the sha256 of their tokens."""

from __future__ import annotations

from typing import Any

import psycopg

from graft.errors import AlreadyExists, NotFound
from graft.store.postgres.base import PostgresBase
from graft.store.protocols.keys import ApiKey


class KeysMixin(PostgresBase):
    """API keys, by the sha256 of their tokens."""

    _KEY_COLUMNS = "key_id, tenant, admin, name, create_time, revoke_time"

    @staticmethod
    def _key_from_row(row: tuple[Any, ...]) -> ApiKey:
        key_id, tenant, admin, name, create_time, revoke_time = row
        return ApiKey(key_id, tenant, bool(admin), name, create_time, revoke_time)

    def add_api_key(
        self, key_id: str, token_hash: str, tenant: str, *, admin: bool = False, name: str = ""
    ) -> ApiKey:
        try:
            with self._tx() as c:
                row = c.execute(
                    "INSERT INTO api_keys (key_id, token_hash, tenant, admin, name, create_time)"
                    f" VALUES (%s, %s, %s, %s, %s, graft_now()) RETURNING {self._KEY_COLUMNS}",
                    (key_id, token_hash, tenant, admin, name),
                ).fetchone()
        except psycopg.errors.UniqueViolation:  # the transaction has been rolled back
            raise AlreadyExists(f"API key {key_id!r} (or its token) exists already") from None
        assert row is not None
        return self._key_from_row(row)

    def api_key_by_hash(self, token_hash: str) -> ApiKey:
        with self._tx() as c:
            row = c.execute(
                f"SELECT {self._KEY_COLUMNS} FROM api_keys WHERE token_hash = %s", (token_hash,)
            ).fetchone()
        if row is None:
            raise NotFound("no such API key")
        return self._key_from_row(row)

    def list_api_keys(self) -> list[ApiKey]:
        with self._tx() as c:
            rows = c.execute(
                f"SELECT {self._KEY_COLUMNS} FROM api_keys ORDER BY create_time, key_id"
            ).fetchall()
        return [self._key_from_row(r) for r in rows]

    def revoke_api_key(self, key_id: str) -> ApiKey:
        with self._tx() as c:
            c.execute(
                "UPDATE api_keys SET revoke_time = graft_now()"
                " WHERE key_id = %s AND revoke_time IS NULL",
                (key_id,),
            )
            row = c.execute(
                f"SELECT {self._KEY_COLUMNS} FROM api_keys WHERE key_id = %s", (key_id,)
            ).fetchone()
        if row is None:
            raise NotFound(f"API key {key_id!r} not found")
        return self._key_from_row(row)
