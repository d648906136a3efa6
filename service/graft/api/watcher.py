"""One store watcher for everything the API awaits: new progress events of the jobs someone
follows (StreamProgress) and the end of the tasks someone waits for (Advise, uploads).

A stream or a waiting call costs one `asyncio.Event` here, not a thread or a poll loop of
its own: the watcher reads the store once per interval for all of them (one query for the
followed jobs' last sequences and states, one for the awaited tasks' states) and wakes only
those whose job or task changed. 10,000 open streams on quiet jobs cost one indexed read of
10,000 rows per interval, and nothing else.

A store that notifies changes (PostgreSQL's LISTEN/NOTIFY, `JobStore.subscribe_changes`)
makes the watcher poll at once when a job or task it watches changed, instead of at the
end of the interval; the interval stays as the safety net (a notification can be lost).
SQLite notifies nothing: there the interval is all there is.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from concurrent.futures import Executor
from dataclasses import dataclass, field

from graft.domain import JobState
from graft.store import JobStore

log = logging.getLogger(__name__)


@dataclass
class _Watched:
    events: set[asyncio.Event] = field(default_factory=set)
    seen: tuple[int, JobState] | None = None  # (last_sequence, state) at the last poll


class StoreWatcher:
    def __init__(self, store: JobStore, pool: Executor, interval: float = 0.2) -> None:
        self.store = store
        self.pool = pool  # the store calls run here, off the event loop
        self.interval = interval
        self._jobs: dict[str, _Watched] = {}
        self._tasks: dict[str, _Watched] = {}
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        self._nudge: asyncio.Event | None = None  # set when the store says something changed
        self._unsubscribe: Callable[[], None] | None = None

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        nudge = self._nudge = asyncio.Event()

        def changed(key: str) -> None:  # on the store's listener thread
            loop.call_soon_threadsafe(self._changed, key, nudge)

        self._unsubscribe = self.store.subscribe_changes(changed)
        self._task = loop.create_task(self._loop(), name="store-watcher")

    def _changed(self, key: str, nudge: asyncio.Event) -> None:
        """Poll now if the change is one somebody waits for ("" : it may be)."""
        if not key or key in self._jobs or key in self._tasks:
            nudge.set()

    async def stop(self) -> None:
        """Stop polling and wake everyone (they see the server draining and end)."""
        self._closed = True
        if self._unsubscribe is not None:
            self._unsubscribe()
        self.wake_all()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def wake_all(self) -> None:
        for watched in (*self._jobs.values(), *self._tasks.values()):
            for event in watched.events:
                event.set()

    @property
    def followers(self) -> int:
        return sum(len(w.events) for w in self._jobs.values())

    @contextlib.asynccontextmanager
    async def follow_job(self, job_id: str) -> AsyncIterator[asyncio.Event]:
        """An event set whenever the job's last sequence or state changes (and at stop)."""
        async with self._subscribe(self._jobs, job_id) as event:
            yield event

    async def wait_task(self, task_id: str) -> None:
        """Return once the task has ended (or the watcher stops)."""
        async with self._subscribe(self._tasks, task_id) as event:
            while not self._closed:
                await event.wait()
                event.clear()
                seen = self._tasks[task_id].seen
                if seen is not None and seen[1].terminal:
                    return

    @contextlib.asynccontextmanager
    async def _subscribe(
        self, table: dict[str, _Watched], key: str
    ) -> AsyncIterator[asyncio.Event]:
        event = asyncio.Event()
        watched = table.setdefault(key, _Watched())
        watched.events.add(event)
        try:
            yield event
        finally:
            watched.events.discard(event)
            if not watched.events:
                table.pop(key, None)

    async def _loop(self) -> None:
        while not self._closed:
            try:
                await self.poll()
            except Exception:  # the store hiccups: keep watching; health reports the store
                log.exception("store watcher: poll failed")
            await self._pause()

    async def _pause(self) -> None:
        """Until the interval is over or the store tells of a change someone waits for.
        A change told while the poll ran ends the pause at once: nothing is missed."""
        nudge = self._nudge
        if nudge is None:
            await asyncio.sleep(self.interval)
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(nudge.wait(), self.interval)
        nudge.clear()

    async def poll(self) -> None:
        if self._jobs:
            loop = asyncio.get_running_loop()
            progress = await loop.run_in_executor(
                self.pool, self.store.job_progress, list(self._jobs)
            )
            self._update(self._jobs, progress)
        if self._tasks:
            states = await asyncio.get_running_loop().run_in_executor(
                self.pool, self.store.task_states, list(self._tasks)
            )
            self._update(self._tasks, {k: (0, s) for k, s in states.items()})

    @staticmethod
    def _update(table: dict[str, _Watched], now: dict[str, tuple[int, JobState]]) -> None:
        for key, value in now.items():
            watched = table.get(key)
            if watched is None or watched.seen == value:
                continue
            watched.seen = value
            for event in watched.events:
                event.set()
