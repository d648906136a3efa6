"""Work an RPC hands to a worker and answers with (Advise, an upload's check): queued as a
task in the store and awaited without holding a thread."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import grpc

from graft import errors
from graft.api.services import Services
from graft.domain import JobState, TaskKind

# The module these lines were written in: log records keep its name.
log = logging.getLogger("graft.api.servicer")


async def run_task(
    services: Services,
    kind: TaskKind,
    request: dict[str, Any],
    context: grpc.aio.ServicerContext,
) -> dict[str, Any]:
    """Queue a task for a worker and await its result without holding a thread. The
    caller's deadline (or, with none, `advise_timeout_seconds`) goes with the task; a
    caller that goes away or runs out of time cancels it, and its worker stops."""
    remaining = context.time_remaining()
    budget = services.config.advise_timeout_seconds
    timeout = budget if remaining is None else min(remaining, budget)
    store = services.store
    task = await services.call(store.create_task, kind, request, time.time() + timeout)
    try:
        async with asyncio.timeout(timeout):
            await services.watcher.wait_task(task.task_id)
    except BaseException as exc:
        # Cancelled (the client went away or its deadline passed), timed out here, or
        # the server is stopping: nobody will read the result, so stop the work.
        try:
            asyncio.get_running_loop().run_in_executor(
                services.store_pool, store.cancel_task, task.task_id
            )
        except RuntimeError:  # the server has shut its store pool down
            log.warning("task %s not cancelled: the server is stopping", task.task_id)
        if isinstance(exc, TimeoutError):
            raise errors.Unavailable(
                f"no worker finished the {kind.name.lower()} task in {timeout:.0f} s"
            ) from None
        raise
    task = await services.call(store.get_task, task.task_id)
    if task.state == JobState.SUCCEEDED:
        return task.result
    if task.state == JobState.FAILED:
        raise errors.error_from_dict(task.error_detail)
    if services.draining.is_set():
        raise errors.Unavailable("server is shutting down; retry")
    raise errors.Unavailable(f"the {kind.name.lower()} task was cancelled; retry")
