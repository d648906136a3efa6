"""The LISTEN side of change notifications: one connection and one thread per store that
has subscribers, handing each NOTIFY payload on the channel to every subscriber."""

from __future__ import annotations

import itertools
import logging
import threading
from collections.abc import Callable

import psycopg
from psycopg.rows import TupleRow

from graft.store.protocols.changes import ChangeCallback

log = logging.getLogger("graft.store.postgres")

# How long the thread waits for a notification before it looks at its stop flag: the most
# close() waits for it.
_POLL_S = 0.25


class ChangeListener:
    """LISTENs on `channel` once someone subscribes; reconnects (with back-off) when the
    connection drops, and then tells every subscriber "" (changes may have been missed)."""

    def __init__(self, conninfo: str, name: str, channel: str) -> None:
        self._conninfo = conninfo
        self._name = name
        self._channel = channel
        self._callbacks: dict[int, ChangeCallback] = {}
        self._ids = itertools.count()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def subscribe(self, callback: ChangeCallback) -> Callable[[], None]:
        """Add `callback`. The first subscription connects and LISTENs before it returns,
        so changes committed after it are not missed (unless the connection is down:
        then the thread keeps trying, and says "" once it is back)."""
        with self._lock:
            key = next(self._ids)
            self._callbacks[key] = callback
            if self._thread is None:
                conn = self._listen_or_none()
                self._thread = threading.Thread(
                    target=self._run, args=(conn,), name="store-listener", daemon=True
                )
                self._thread.start()

        def unsubscribe() -> None:
            with self._lock:
                self._callbacks.pop(key, None)

        return unsubscribe

    def stop(self) -> None:
        self._stop.set()
        thread = self._thread
        if thread is not None:
            thread.join(timeout=5 * _POLL_S + 5)

    def _listen(self) -> psycopg.Connection[TupleRow]:
        conn = psycopg.connect(self._conninfo, autocommit=True)
        try:
            # A channel name is an identifier (no parameter): ours is a constant.
            conn.execute(f"LISTEN {self._channel}")
        except BaseException:
            conn.close()
            raise
        return conn

    def _listen_or_none(self) -> psycopg.Connection[TupleRow] | None:
        try:
            return self._listen()
        except psycopg.OperationalError as exc:
            log.warning(
                "job store %s: no change notifications yet (%s); retrying",
                self._name,
                " ".join(str(exc).split()),
            )
            return None

    def _run(self, conn: psycopg.Connection[TupleRow] | None) -> None:
        delay = 0.1
        while not self._stop.is_set():
            if conn is None:
                if self._stop.wait(delay):
                    return
                delay = min(2 * delay, 5.0)
                conn = self._listen_or_none()
                if conn is None:
                    continue
                self._deliver("")  # what changed while we were away is unknown
                delay = 0.1
            try:
                with conn:
                    while not self._stop.is_set():
                        for note in conn.notifies(timeout=_POLL_S):
                            self._deliver(note.payload)
            except psycopg.OperationalError as exc:
                log.warning(
                    "job store %s: change notifications interrupted (%s); reconnecting",
                    self._name,
                    " ".join(str(exc).split()),
                )
            conn = None

    def _deliver(self, key: str) -> None:
        with self._lock:
            callbacks = list(self._callbacks.values())
        for callback in callbacks:
            try:
                callback(key)
            except Exception:  # one subscriber's bug must not starve the others
                log.exception("job store %s: a change subscriber failed", self._name)
