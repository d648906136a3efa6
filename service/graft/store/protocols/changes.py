"""`ChangeFeed`: being told soon that a job or a task changed, instead of finding out at
the next poll."""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol, runtime_checkable

# Called with the id of the job or task that changed, or "" for "anything may have".
ChangeCallback = Callable[[str], None]


@runtime_checkable
class ChangeFeed(Protocol):
    """Notifications of committed changes, from any process sharing the store."""

    # Whether `subscribe_changes` ever calls back: False for SQLite, whose callers must
    # poll often; True for PostgreSQL, whose callers poll only as a safety net.
    notifies_changes: bool

    def subscribe_changes(self, callback: ChangeCallback) -> Callable[[], None]:
        """Have `callback(key)` called, from a thread of the store's own, soon after a
        change commits: `key` is the id of a job that got an event (every change of its
        state appends one) or of a task whose state changed; "" means changes may have
        been missed (the store lost its notification connection and has it back): look at
        everything. Returns the function that ends the subscription.

        Best effort, a hint to poll now: a notification may be lost, so callers keep
        polling, less often. A store without notifications (SQLite) never calls back; its
        callers find changes at their poll interval. `callback` must be quick and must
        not call the store (it runs on the thread that delivers every notification).
        """
        ...
