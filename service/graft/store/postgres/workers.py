"""Worker heartbeats."""

from __future__ import annotations

import json
from typing import Any

from graft.store.codec import dumps
from graft.store.postgres.base import PostgresBase
from graft.store.protocols.workers import WorkerInfo


class WorkersMixin(PostgresBase):
    """Worker heartbeats."""

    def heartbeat_worker(self, worker_id: str, pid: int, host: str, info: dict[str, Any]) -> None:
        with self._tx() as c:
            c.execute(
                "INSERT INTO workers (worker_id, pid, host, last_heartbeat, info_json)"
                " VALUES (%s, %s, %s, graft_now(), %s) ON CONFLICT (worker_id) DO UPDATE SET"
                " pid = excluded.pid, host = excluded.host,"
                " last_heartbeat = excluded.last_heartbeat, info_json = excluded.info_json",
                (worker_id, pid, host, dumps(info)),
            )

    def list_workers(self) -> list[WorkerInfo]:
        with self._tx() as c:
            rows = c.execute(
                "SELECT worker_id, pid, host, last_heartbeat, info_json FROM workers"
                " ORDER BY worker_id"
            ).fetchall()
        return [WorkerInfo(w, p, h, t, json.loads(i)) for w, p, h, t, i in rows]
