"""Cooperative cancellation of Advise's measurements.

Advise runs in an advisor lane on behalf of an RPC caller who may go away or run out of
time; its work must then stop within a few seconds, not run on for a minute. The lane wraps
the work in `cancellable(should_stop)`; the loops that take time (each batch through a
network, each fold of a probe, each pilot step) call `checkpoint()`, which raises
`AdviceCancelled` once `should_stop()` says so. Outside a scope `checkpoint()` costs one
context-variable read and never raises, so the measurements stay plain functions for tests
and benchmarks.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Callable, Iterator

from graft.errors import Cancelled
from graft.training.errors import TrainingCancelled

_should_stop: contextvars.ContextVar[Callable[[], bool] | None] = contextvars.ContextVar(
    "advise_should_stop", default=None
)


class AdviceCancelled(Cancelled):
    """Advise's caller went away or its deadline passed."""


@contextlib.contextmanager
def cancellable(should_stop: Callable[[], bool]) -> Iterator[None]:
    """Run the block so that its checkpoints (and the pilot's and timing pass's
    `should_stop` hooks, which raise TrainingCancelled) stop it with AdviceCancelled."""
    token = _should_stop.set(should_stop)
    try:
        yield
    except TrainingCancelled as exc:
        raise AdviceCancelled("advice cancelled: its caller went away or ran out of time") from exc
    finally:
        _should_stop.reset(token)


def should_stop() -> bool:
    """Whether the work in this scope should stop (False outside any scope)."""
    check = _should_stop.get()
    return check is not None and check()


def checkpoint() -> None:
    """Raise AdviceCancelled if the work in this scope should stop."""
    if should_stop():
        raise AdviceCancelled("advice cancelled: its caller went away or ran out of time")
