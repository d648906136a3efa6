"""Logging: one JSON object per line by default (what log shippers and `jq` read), or a
human-readable line with `--log-format text`. Context that applies to a stretch of work (the
RPC's method and request id, the job being trained) is bound with `log_context` and added to
every record logged inside it, from any logger, without passing it around.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import logging
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

LOG_FORMATS = ("json", "text")
CONTEXT_KEYS = ("method", "request_id", "job_id", "worker_id")

_context: contextvars.ContextVar[dict[str, str] | None] = contextvars.ContextVar(
    "graft_log_context", default=None
)


@contextlib.contextmanager
def log_context(**fields: str) -> Iterator[None]:
    """Add `fields` (e.g. job_id="…") to every record logged in this block."""
    token = _context.set({**(_context.get() or {}), **{k: v for k, v in fields.items() if v}})
    try:
        yield
    finally:
        _context.reset(token)


class ContextFilter(logging.Filter):
    """Copies the bound context onto each record (as attributes the formatters read)."""

    def filter(self, record: logging.LogRecord) -> bool:
        for key, value in (_context.get() or {}).items():
            if not hasattr(record, key):
                setattr(record, key, value)
        return True


class JsonFormatter(logging.Formatter):
    """`{"time", "level", "logger", "message", [context keys], [exc_info]}` per line."""

    def __init__(self, process: str = "") -> None:
        super().__init__()
        self.process_name = process

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if self.process_name:
            entry["process"] = self.process_name
        for key in CONTEXT_KEYS:
            value = getattr(record, key, None)
            if value:
                entry[key] = value
        if record.exc_info:
            entry["exc_info"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    """`time level [process] logger: message (key=value …)` for people at a terminal."""

    def __init__(self, process: str = "") -> None:
        prefix = f"{process} " if process else ""
        super().__init__(f"%(asctime)s %(levelname)s {prefix}%(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        extras = [f"{k}={getattr(record, k)}" for k in CONTEXT_KEYS if getattr(record, k, None)]
        if extras:
            first, sep, rest = text.partition("\n")
            text = f"{first} ({' '.join(extras)}){sep}{rest}"
        return text


def setup_logging(fmt: str = "json", level: str = "info", process: str = "") -> None:
    """Route every logger to stderr in `fmt`; replaces handlers set up before."""
    if fmt not in LOG_FORMATS:
        raise ValueError(f"log format must be one of {LOG_FORMATS}, got {fmt!r}")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter(process) if fmt == "json" else TextFormatter(process))
    handler.addFilter(ContextFilter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
