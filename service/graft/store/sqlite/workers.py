"""Worker heartbeats."""

from __future__ import annotations

import json
from typing import Any

from graft.store.codec import dumps
from graft.store.protocols.workers import WorkerInfo
from graft.store.sqlite.base import SqliteBase


class WorkersMixin(SqliteBase):
    """Worker heartbeats."""

    def heartbeat_worker(self, worker_id: str, pid: int, host: str, info: dict[str, Any]) -> None:
        now = self._clock()
        with self._tx(write=True) as c:
            c.execute(
                "INSERT INTO workers (worker_id, pid, host, last_heartbeat, info_json)"
                " VALUES (?, ?, ?, ?, ?) ON CONFLICT (worker_id) DO UPDATE SET"
                " pid = excluded.pid, host = excluded.host,"
                " last_heartbeat = excluded.last_heartbeat, info_json = excluded.info_json",
                (worker_id, pid, host, now, dumps(info)),
            )

    def list_workers(self) -> list[WorkerInfo]:
        with self._tx(write=False) as c:
            rows = c.execute(
                "SELECT worker_id, pid, host, last_heartbeat, info_json FROM workers"
                " ORDER BY worker_id"
            ).fetchall()
        return [WorkerInfo(w, p, h, t, json.loads(i)) for w, p, h, t, i in rows]
