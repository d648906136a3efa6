"""The API's store watcher polls at its interval, and at once when the store notifies a
change someone waits for (PostgreSQL's LISTEN/NOTIFY; SQLite notifies nothing)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from graft.api.watcher import StoreWatcher
from graft.domain import DatasetRef, EventKind, JobState, ProgressEvent, TrainingPlan
from graft.store import JobStore, SqliteJobStore
from graft.store.postgres import PostgresJobStore

INTERVAL = 30.0  # far longer than any test waits: a wake-up before it was a notification


def open_pair(backend: str, request: pytest.FixtureRequest, tmp_path: Path) -> list[JobStore]:
    """Two store objects on one database: the server's and a worker's."""
    if backend == "sqlite":
        return [SqliteJobStore(tmp_path / "graft.sqlite3") for _ in range(2)]
    url = request.getfixturevalue("postgres_url")
    return [PostgresJobStore(url) for _ in range(2)]


async def _follow_one_change(server: JobStore, worker: JobStore, job_id: str) -> float | None:
    """Seconds from a worker's event to the watcher waking its follower (None: not within
    2 s), with the watcher's interval at 30 s."""
    loop = asyncio.get_running_loop()
    with ThreadPoolExecutor(2) as pool:
        watcher = StoreWatcher(server, pool, interval=INTERVAL)
        watcher.start()
        try:
            async with watcher.follow_job(job_id) as changed:
                await asyncio.wait_for(changed.wait(), 5)  # the first poll sees the job
                changed.clear()
                await asyncio.sleep(0.5)
                assert not changed.is_set()  # nothing changed: nobody woken
                event = ProgressEvent(kind=EventKind.STEP, state=JobState.RUNNING, step=1)
                t0 = time.monotonic()
                await loop.run_in_executor(None, worker.append_event, job_id, event)
                try:
                    await asyncio.wait_for(changed.wait(), 2)
                except TimeoutError:
                    return None
                return time.monotonic() - t0
        finally:
            await watcher.stop()


@pytest.mark.parametrize(
    "backend", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
)
def test_a_notified_change_wakes_the_watcher_before_its_interval(
    backend: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    server, worker = open_pair(backend, request, tmp_path)
    try:
        job, _ = server.create_job(
            model_name="m", dataset=DatasetRef(uri="/d"), plan=TrainingPlan(), request_id=""
        )
        assert worker.claim_job("w", 60) is not None
        woke = asyncio.run(_follow_one_change(server, worker, job.job_id))
    finally:
        server.close()
        worker.close()
    if backend == "postgres":
        assert woke is not None and woke < 2  # NOTIFY, not the 30 s poll
    else:
        assert woke is None  # SQLite: the change is found at the next poll, 30 s away


class _NotifyingStore:
    """Just what the watcher uses: a subscription it can be told through, and a count of
    its polls."""

    def __init__(self) -> None:
        self.callbacks: list[Callable[[str], None]] = []
        self.polls = 0

    def subscribe_changes(self, callback: Callable[[str], None]) -> Callable[[], None]:
        self.callbacks.append(callback)
        return lambda: self.callbacks.remove(callback)

    def job_progress(self, job_ids: Sequence[str]) -> dict[str, tuple[int, JobState]]:
        self.polls += 1
        return {job_id: (self.polls, JobState.RUNNING) for job_id in job_ids}


def test_only_changes_someone_waits_for_wake_the_watcher() -> None:
    store = _NotifyingStore()

    async def scenario() -> None:
        with ThreadPoolExecutor(1) as pool:
            watcher = StoreWatcher(store, pool, interval=INTERVAL)  # type: ignore[arg-type]
            watcher.start()
            async with watcher.follow_job("j1") as changed:
                await asyncio.wait_for(changed.wait(), 5)
                changed.clear()
                (tell,) = store.callbacks
                polls = store.polls
                tell("someone-else's-job")  # from a store thread, as the listener does
                await asyncio.sleep(0.3)
                assert store.polls == polls  # not ours: no poll
                for key in ("j1", ""):  # ours, or "anything may have changed"
                    changed.clear()
                    tell(key)
                    await asyncio.wait_for(changed.wait(), 2)
            await watcher.stop()
            assert store.callbacks == []  # unsubscribed

    asyncio.run(scenario())


def test_the_watcher_polls_often_only_a_store_that_does_not_notify(
    postgres_url: str, tmp_path: Path
) -> None:
    from graft.config import Config
    from graft.server import NOTIFIED_WATCH_SECONDS, watch_interval

    config = Config(data_dir=tmp_path, poll_seconds=0.5)
    sqlite = SqliteJobStore(tmp_path / "s.sqlite3")
    pg = PostgresJobStore(postgres_url)
    try:
        assert watch_interval(sqlite, config) == 0.25
        assert watch_interval(pg, config) == NOTIFIED_WATCH_SECONDS
    finally:
        sqlite.close()
        pg.close()
