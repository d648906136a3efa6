"""Connections, transactions, the schema and the lifecycle of the SQLite store."""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from graft.errors import FailedPrecondition, Unavailable
from graft.store.sqlite.schema import _MIGRATIONS, _SCHEMA, SCHEMA_VERSION

# The name the single module had, so log records keep it.
log = logging.getLogger("graft.store.sqlite")

# Ids per `IN (...)` query (SQLite allows 32766 parameters).
_IN_CHUNK = 500


def _filters(*conditions: tuple[str, object]) -> tuple[str, tuple[object, ...]]:
    """A WHERE clause matching each (column, value) whose value is not None, and its
    arguments ("" and () when every value is None). Column names are the caller's literals."""
    used = [(column, value) for column, value in conditions if value is not None]
    if not used:
        return "", ()
    return " WHERE " + " AND ".join(f"{column} = ?" for column, _ in used), tuple(
        v for _, v in used
    )


class SqliteBase:
    """Connections, transactions, schema and lifecycle, shared by every part of
    `SqliteJobStore` (the docstring of `graft.store.sqlite` says how they interact)."""

    notifies_changes = False  # no notifications between processes: poll

    def __init__(
        self,
        path: Path | str,
        *,
        clock: Callable[[], float] = time.time,
        busy_timeout_s: float = 10.0,
    ) -> None:
        self.path = Path(path)
        self._clock = clock
        self._busy_timeout_s = busy_timeout_s
        self._local = threading.local()
        self._lock = threading.Lock()  # guards _conns, _busy and _closed only
        self._idle = threading.Condition(self._lock)
        self._conns: dict[threading.Thread, sqlite3.Connection] = {}
        self._busy = 0  # transactions in progress: close() waits for them
        self._pid = os.getpid()
        self._closed = False
        self._init_schema()

    # --- connections and transactions -------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        try:
            conn = sqlite3.connect(
                self.path,
                timeout=self._busy_timeout_s,
                isolation_level=None,  # we issue BEGIN/COMMIT ourselves
                check_same_thread=False,  # only so close() may close it from another thread
            )
            conn.execute(f"PRAGMA busy_timeout = {int(self._busy_timeout_s * 1000)}")
            conn.execute("PRAGMA foreign_keys = ON")
            conn.execute("PRAGMA synchronous = NORMAL")
        except sqlite3.Error as e:
            raise Unavailable(f"job store {self.path} is unreachable: {e}") from e
        return conn

    def _conn(self) -> sqlite3.Connection:
        """This thread's connection, opened on first use."""
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        pid = os.getpid()
        if conn is not None and self._local.pid == pid:
            return conn
        with self._lock:
            if self._closed:
                raise Unavailable(f"job store {self.path} is closed")
            if pid != self._pid:
                # A forked child must not touch its parent's connections (SQLite forbids
                # it); drop them unclosed and start afresh.
                self._conns = {}
                self._pid = pid
            # Connections of threads that have ended are closed here, so a server whose
            # thread pool churns does not accumulate file handles.
            for thread in [t for t in self._conns if not t.is_alive()]:
                self._conns.pop(thread).close()
        conn = self._connect()
        with self._lock:
            self._conns[threading.current_thread()] = conn
        self._local.conn = conn
        self._local.pid = pid
        return conn

    @contextmanager
    def _tx(self, *, write: bool) -> Iterator[sqlite3.Connection]:
        """One transaction: BEGIN IMMEDIATE for writes (the write lock up front), a
        deferred BEGIN (one consistent snapshot) for reads. Commits on normal exit,
        rolls back on any exception."""
        conn = self._conn()
        with self._lock:
            if self._closed:
                raise Unavailable(f"job store {self.path} is closed")
            self._busy += 1
        try:
            conn.execute("BEGIN IMMEDIATE" if write else "BEGIN")
            try:
                yield conn
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
        except sqlite3.OperationalError as e:
            # "database is locked" past busy_timeout, disk I/O errors, a vanished file.
            if conn.in_transaction:
                try:
                    conn.execute("ROLLBACK")
                except sqlite3.Error:
                    log.exception("rollback failed")
            raise Unavailable(f"job store {self.path}: {e}") from e
        finally:
            with self._lock:
                self._busy -= 1
                if not self._busy:
                    self._idle.notify_all()

    def _init_schema(self) -> None:
        conn = self._conn()
        # Switching to WAL needs a moment with no other connection mid-transaction; when
        # several processes open a fresh file at once, one of them may find it busy.
        deadline = time.monotonic() + self._busy_timeout_s
        while True:
            try:
                mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
                break
            except sqlite3.OperationalError as e:
                if "locked" not in str(e) or time.monotonic() > deadline:
                    raise Unavailable(f"job store {self.path}: {e}") from e
                time.sleep(0.02)
        if mode.lower() != "wal":
            log.warning("job store %s: journal mode is %s, not WAL", self.path, mode)
        with self._tx(write=True) as c:
            c.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
            row = c.execute("SELECT MAX(version) FROM schema_version").fetchone()
            found = row[0]
            if found is None:
                for statement in _SCHEMA:
                    c.execute(statement)
                found = 1
                c.execute("INSERT INTO schema_version (version) VALUES (1)")
            if found < SCHEMA_VERSION:
                for version in range(found, SCHEMA_VERSION):
                    for statement in _MIGRATIONS[version]:
                        c.execute(statement)
                c.execute("UPDATE schema_version SET version = ?", (SCHEMA_VERSION,))
            elif found > SCHEMA_VERSION:
                raise FailedPrecondition(
                    f"job store {self.path} has schema version {found}, newer than this "
                    f"Graft understands ({SCHEMA_VERSION}); upgrade Graft"
                )

    def subscribe_changes(self, callback: Callable[[str], None]) -> Callable[[], None]:
        """SQLite has no notifications between processes: `callback` is never called, and
        the store's pollers (the API's watcher) find changes at their interval."""
        return lambda: None

    def ping(self) -> None:
        try:
            with self._tx(write=False) as c:
                c.execute("SELECT version FROM schema_version").fetchone()
        except sqlite3.Error as e:
            raise Unavailable(f"job store {self.path} is unreachable: {e}") from e

    def close(self) -> None:
        """Refuse new transactions, wait (at most the busy timeout) for those in progress
        in other threads, then close every connection. Closing a connection that another
        thread is using would crash the interpreter inside SQLite, so when a transaction
        is still running after the wait its connections are left to the garbage collector.
        """
        with self._lock:
            self._closed = True
            idle = self._idle.wait_for(lambda: not self._busy, timeout=self._busy_timeout_s)
            conns, self._conns = self._conns, {}
            same_process = self._pid == os.getpid()
        if not idle:
            log.warning("job store %s closed with a transaction still running", self.path)
        elif same_process:
            for conn in conns.values():
                conn.close()
        self._local = threading.local()
