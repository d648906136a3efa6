"""`Services`: what the API's RPC handlers delegate to, built once by graft.server."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any, TypeVar

from graft.api.watcher import StoreWatcher
from graft.config import Config
from graft.predict import Predictor
from graft.store import JobStore

T = TypeVar("T")


@dataclass
class Services:
    """What the servicer delegates to; built once by graft.server."""

    config: Config
    store: JobStore
    predictor: Predictor
    draining: threading.Event
    watcher: StoreWatcher
    store_pool: Executor
    predict_pool: Executor

    async def call(self, fn: Callable[..., T], *args: Any) -> T:
        """`fn(*args)` (a blocking store or file call) on the store pool, awaited."""
        return await asyncio.get_running_loop().run_in_executor(self.store_pool, fn, *args)
