"""Connections, transactions, the clock, change notifications and the lifecycle of the
PostgreSQL store."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg.rows import TupleRow
from psycopg_pool import ConnectionPool

from graft.config import is_postgres_url, redact_url
from graft.errors import FailedPrecondition, Unavailable
from graft.store.postgres.listener import ChangeListener
from graft.store.postgres.schema import migrate
from graft.store.protocols.changes import ChangeCallback

log = logging.getLogger("graft.store.postgres")

# The NOTIFY channel of committed changes; the payload is the job's or task's id.
CHANNEL = "graft_events"

Conn = psycopg.Connection[TupleRow]


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())


def _filters(*conditions: tuple[str, object]) -> tuple[str, tuple[object, ...]]:
    """A WHERE clause matching each (column, value) whose value is not None, and its
    arguments ("" and () when every value is None). Column names are the caller's literals."""
    used = [(column, value) for column, value in conditions if value is not None]
    if not used:
        return "", ()
    return " WHERE " + " AND ".join(f"{column} = %s" for column, _ in used), tuple(
        v for _, v in used
    )


class PostgresBase:
    """Connections, transactions, the clock, notifications and lifecycle, shared by every
    part of `PostgresJobStore` (the docstring of `graft.store.postgres` says how)."""

    notifies_changes = True  # LISTEN/NOTIFY: polling is only the safety net

    def __init__(
        self,
        url: str,
        *,
        clock: Callable[[], float] | None = None,
        pool_size: int = 10,
        timeout_s: float = 10.0,
    ) -> None:
        if not is_postgres_url(url):
            raise ValueError(f"not a postgresql:// URL: {redact_url(url)!r}")
        self.url = url
        self.name = redact_url(url)
        self._clock = clock
        self._closed = False
        try:
            params = conninfo_to_dict(url)
        except psycopg.ProgrammingError as exc:
            raise ValueError(f"invalid store URL {self.name!r}: {_one_line(exc)}") from None
        # An unreachable server fails fast; the sessions say who they are in pg_stat_activity.
        params.setdefault("connect_timeout", max(1, round(timeout_s / 2)))
        params.setdefault("application_name", "graft")
        self._conninfo = make_conninfo("", **params)
        self._migrate()
        self._pool: ConnectionPool[Conn] = ConnectionPool(
            self._conninfo,
            min_size=1,
            max_size=pool_size,
            kwargs={"autocommit": True},  # transactions are explicit: _tx
            check=ConnectionPool.check_connection,  # a dead connection is replaced, not used
            timeout=timeout_s,
            name="graft-store",
            open=False,
        )
        self._pool.open(wait=False)
        self._listener = ChangeListener(self._conninfo, self.name, CHANNEL)

    def _migrate(self) -> None:
        try:
            with psycopg.connect(self._conninfo, autocommit=True) as conn:
                found, now = migrate(conn, self.name)
        except psycopg.OperationalError as exc:
            raise Unavailable(f"job store {self.name} is unreachable: {_one_line(exc)}") from exc
        except psycopg.Error as exc:  # e.g. the role may not create tables
            raise FailedPrecondition(
                f"job store {self.name}: cannot apply its schema: {_one_line(exc)}"
            ) from exc
        if found < now:
            log.info("job store %s: schema version %d -> %d", self.name, found, now)

    # --- transactions -------------------------------------------------------------------

    @contextmanager
    def _tx(self) -> Iterator[Conn]:
        """One transaction on a pooled connection (READ COMMITTED): commits on normal exit,
        rolls back on any exception. Writes lock the rows they change (`FOR NO KEY UPDATE`,
        `SKIP LOCKED` for claims) or an advisory lock where no row exists yet. With an
        injected clock, the transaction's `graft_now()` is that clock's time."""
        if self._closed:
            raise Unavailable(f"job store {self.name} is closed")
        try:
            with self._pool.connection() as conn, conn.transaction():
                if self._clock is not None:
                    conn.execute(
                        "SELECT set_config('graft.now', %s, true)", (repr(float(self._clock())),)
                    )
                yield conn
        except psycopg.OperationalError as exc:  # unreachable, pool exhausted, conflicts
            if self._closed:
                raise Unavailable(f"job store {self.name} is closed") from exc
            raise Unavailable(f"job store {self.name}: {_one_line(exc)}") from exc

    @staticmethod
    def _now(c: Conn) -> float:
        """The transaction's time (`graft_now()`), for values built in Python."""
        row = c.execute("SELECT graft_now()").fetchone()
        assert row is not None
        return float(row[0])

    @staticmethod
    def _lock(c: Conn, *key: str) -> None:
        """Serialise with every transaction taking the same `key` until this one ends (for
        checks of rows that do not exist yet: quotas, counts, the next version)."""
        c.execute("SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))", ("\x1f".join(key),))

    @staticmethod
    def _notify(c: Conn, key: str) -> None:
        """Tell the listeners that the job or task `key` changed, when this commits."""
        c.execute("SELECT pg_notify(%s, %s)", (CHANNEL, key))

    # --- notifications and lifecycle ----------------------------------------------------

    def subscribe_changes(self, callback: ChangeCallback) -> Callable[[], None]:
        if self._closed:
            raise Unavailable(f"job store {self.name} is closed")
        return self._listener.subscribe(callback)

    def ping(self) -> None:
        with self._tx() as c:
            c.execute("SELECT version FROM schema_version").fetchone()

    def close(self) -> None:
        """Refuse new transactions, stop listening and close the pool (a connection still
        in use is closed when its transaction returns it)."""
        self._closed = True
        self._listener.stop()
        self._pool.close()
