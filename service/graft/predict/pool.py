"""The decode pool: a few threads fed by a queue.SimpleQueue, handing results straight to
the event loop with one call_soon_threadsafe each.

Why not ThreadPoolExecutor + run_in_executor: measured with py-spy under load (64 callers,
2 cores), 19% of the event loop thread's busy time went into ThreadPoolExecutor.submit,
most of it blocked in its idle semaphore and shutdown lock, held by worker threads that
were themselves waiting for the GIL. The loop thread serves every RPC, so time it spends
blocked is time every caller waits. A SimpleQueue put never waits for another thread.

It is still a concurrent.futures.Executor (`submit`, `shutdown`) for blocking callers.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
from collections.abc import Callable
from concurrent.futures import Executor, Future
from typing import Any, TypeVar

T = TypeVar("T")

# (future, fn, args, loop, posted): loop None means `future` is a concurrent.futures.Future;
# posted means `fn` settles `future` itself (an exception it raises still settles it here).
_Item = tuple[Any, Callable[..., Any], tuple[Any, ...], asyncio.AbstractEventLoop | None, bool]


def settle(future: asyncio.Future[Any], outcome: Any) -> None:
    """Complete an asyncio future on its loop's thread with a result or an exception
    (unless its caller has gone: cancelled)."""
    if future.done():
        return
    if isinstance(outcome, BaseException):
        future.set_exception(outcome)
    else:
        future.set_result(outcome)


def settle_threadsafe(loop: asyncio.AbstractEventLoop, pairs: list[tuple[Any, Any]]) -> None:
    """Settle (future, outcome) pairs of one loop from another thread, in one hop."""

    def run() -> None:
        for future, outcome in pairs:
            settle(future, outcome)

    with contextlib.suppress(RuntimeError):  # the loop is closed: nobody is waiting
        loop.call_soon_threadsafe(run)


class DecodePool(Executor):
    def __init__(self, threads: int, name: str = "predict-decode") -> None:
        self._queue: queue.SimpleQueue[_Item | None] = queue.SimpleQueue()
        self._shutdown = False
        self._threads = [
            threading.Thread(target=self._work, name=f"{name}-{i}", daemon=True)
            for i in range(max(1, threads))
        ]
        for t in self._threads:
            t.start()

    def run(self, fn: Callable[..., T], *args: Any) -> asyncio.Future[T]:
        """`fn(*args)` on a pool thread, as a future of the running loop (await it)."""
        if self._shutdown:
            raise RuntimeError("cannot schedule new work after shutdown")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._queue.put((future, fn, args, loop, False))
        return future

    def post(self, future: asyncio.Future[Any], fn: Callable[..., None], *args: Any) -> None:
        """`fn(*args)` on a pool thread; `fn` settles `future` (of the running loop) itself,
        or hands it on: Predict's decode stage gives its work straight to the batcher and a
        runner answers the caller, one hop fewer on the latency path. Skipped when `future`
        is cancelled first; an exception escaping `fn` settles `future` with it."""
        if self._shutdown:
            raise RuntimeError("cannot schedule new work after shutdown")
        self._queue.put((future, fn, args, asyncio.get_running_loop(), True))

    def submit(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> Future[T]:
        if self._shutdown:
            raise RuntimeError("cannot schedule new work after shutdown")
        future: Future[T] = Future()
        self._queue.put((future, (lambda: fn(*args, **kwargs)), (), None, False))
        return future

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        self._shutdown = True
        if cancel_futures:
            while True:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is not None:
                    self._cancel(item)
        for _ in self._threads:
            self._queue.put(None)
        if wait:
            for t in self._threads:
                t.join()

    @staticmethod
    def _cancel(item: _Item) -> None:
        future, _, _, loop, _ = item
        if loop is None:
            future.cancel()
        else:
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(future.cancel)

    def _work(self) -> None:
        while (item := self._queue.get()) is not None:
            future, fn, args, loop, posted = item
            if loop is None:
                if not future.set_running_or_notify_cancel():
                    continue
                try:
                    future.set_result(fn(*args))
                except BaseException as exc:
                    future.set_exception(exc)
                continue
            if future.cancelled():  # a racy read, only to skip work nobody awaits
                continue
            try:
                outcome = fn(*args)
            except BaseException as exc:
                outcome = exc
            else:
                if posted:
                    continue  # fn has settled the future or handed it on
            settle_threadsafe(loop, [(future, outcome)])
