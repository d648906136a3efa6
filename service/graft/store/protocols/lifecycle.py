"""`StoreLifecycle`: health and shutdown of a store."""

from __future__ import annotations

from typing import Protocol, runtime_checkable


@runtime_checkable
class StoreLifecycle(Protocol):
    """Health and shutdown of a store."""

    def ping(self) -> None:
        """Return if the database answers; raise Unavailable otherwise."""
        ...

    def close(self) -> None:
        """Release connections. Further calls raise Unavailable."""
        ...
