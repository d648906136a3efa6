"""What stays on disk: the extracted-archive cache's bound, and the debris of uploads.

Files only: which uploads expire is the store's to say (graft.advisor.housekeeping ties
the two together and runs both on the advisor lane).

- The cache `cache_dir/extracted/<sha256>` of data-root archives is bounded by
  `extract_cache_bytes`: the least recently used entries (a folder's mtime is its last
  use, set by `extracted_root`) are evicted first, never one in `keep` (a queued or
  running job's) nor one used in the last `min_idle` seconds (an Advise or a job
  starting right now).
- An upload folder being removed (renamed to `.deleting-*`) or a temporary extraction
  folder (`.tmp-*`) that a crash left behind is removed after `grace` seconds.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from graft.config import Config
from graft.data.archive_writer import ENTRY_COST
from graft.data.resolve import (
    UPLOAD_META,
    archive_sha256,
    archive_suffix,
    locate_dataset,
    write_atomically,
)
from graft.data.uploads import DELETING_PREFIX
from graft.domain import DatasetRef
from graft.errors import GraftError

log = logging.getLogger(__name__)

_DIGEST = re.compile(r"^[0-9a-f]{64}$")
_UPLOAD_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


@dataclass(frozen=True)
class CacheEntry:
    """One extracted archive in the cache."""

    digest: str
    path: Path
    size_bytes: int
    last_use: float


@dataclass(frozen=True)
class UploadFolder:
    """An upload's folder as found on disk: its meta file (None before its check ended)
    and when anything in it last changed."""

    dataset_id: str
    meta: dict[str, object] | None
    last_change: float


def tree_bytes(root: Path) -> int:
    """What a folder counts against the limits: its files' bytes plus ENTRY_COST per entry
    (as extracting counted it)."""
    total = 0
    for folder, dirs, files in os.walk(root):
        for name in files:
            try:
                total += os.lstat(os.path.join(folder, name)).st_size
            except FileNotFoundError:  # removed while we walked: it takes nothing
                continue
        total += ENTRY_COST * (len(dirs) + len(files))
    return total


def cache_entries(config: Config) -> list[CacheEntry]:
    """The extracted archives in the cache, least recently used first. An entry without a
    recorded size (extracted before sizes were kept) is measured once."""
    root = config.cache_dir / "extracted"
    entries = []
    for path in _listdir(root):
        if not (_DIGEST.match(path.name) and path.is_dir()):
            continue
        size_file = root / f"{path.name}.size"
        try:
            size = int(size_file.read_text())
        except (FileNotFoundError, ValueError):  # extracted before sizes were kept
            size = tree_bytes(path)
            write_atomically(size_file, str(size))
        try:
            last_use = path.stat().st_mtime
        except FileNotFoundError:  # evicted by another process meanwhile
            continue
        entries.append(CacheEntry(path.name, path, size, last_use))
    return sorted(entries, key=lambda e: (e.last_use, e.digest))


def evict_extracted(
    config: Config, *, keep: set[str], now: float, min_idle: float
) -> list[CacheEntry]:
    """Evict least recently used cache entries until the cache holds at most
    `extract_cache_bytes` (0: unbounded); returns the evicted ones."""
    if not config.extract_cache_bytes:
        return []
    entries = cache_entries(config)
    total = sum(e.size_bytes for e in entries)
    evicted = []
    for entry in entries:
        if total <= config.extract_cache_bytes:
            break
        if entry.digest in keep or now - entry.last_use < min_idle:
            continue
        _remove_entry(entry)
        total -= entry.size_bytes
        evicted.append(entry)
    if total > config.extract_cache_bytes:
        log.warning(
            "the extracted-archive cache holds %d bytes, more than extract_cache_bytes (%d):"
            " the rest is in use",
            total,
            config.extract_cache_bytes,
        )
    return evicted


def _remove_entry(entry: CacheEntry) -> None:
    # Renamed away first: a resolver never finds a half-removed folder under its digest.
    doomed = entry.path.with_name(f"{DELETING_PREFIX}{entry.digest[:16]}-{uuid.uuid4().hex[:8]}")
    try:
        os.rename(entry.path, doomed)
    except FileNotFoundError:  # another process evicted it first
        return
    (entry.path.parent / f"{entry.digest}.size").unlink(missing_ok=True)
    shutil.rmtree(doomed, ignore_errors=True)
    log.info("evicted extracted archive %s (%d bytes)", entry.digest, entry.size_bytes)


def cache_digests_in_use(refs: list[DatasetRef], config: Config) -> set[str]:
    """The cache entries (digests) of the data-root archives among `refs`. A reference
    that no longer resolves is skipped: its job fails on its own."""
    digests = set()
    for ref in refs:
        if not ref.uri:
            continue
        try:
            path, _, _ = locate_dataset(DatasetRef(uri=ref.uri), config)
            if archive_suffix(path.name) and path.is_file():
                digests.add(archive_sha256(path, config))
        except (GraftError, OSError) as exc:
            log.info("cache sweep: %s is not an archive to keep: %s", ref.uri, exc)
    return digests


def upload_folders(config: Config) -> Iterator[UploadFolder]:
    """Every upload folder on disk (whether or not the store knows it)."""
    for path in _listdir(config.uploads_dir):
        if not (_UPLOAD_ID.match(path.name) and path.is_dir()):
            continue
        try:
            meta = json.loads((path / UPLOAD_META).read_text())
        except FileNotFoundError:
            meta = None
        except (OSError, ValueError) as exc:
            log.warning("upload %s: unreadable %s: %s", path.name, UPLOAD_META, exc)
            meta = None
        yield UploadFolder(path.name, meta if isinstance(meta, dict) else None, _last_change(path))


def remove_debris(config: Config, *, now: float, grace: float) -> int:
    """Remove what interrupted removals and extractions left behind (older than `grace`
    seconds); returns how many folders."""
    removed = 0
    for root in (config.uploads_dir, config.cache_dir / "extracted"):
        for path in _listdir(root):
            debris = path.name.startswith((DELETING_PREFIX, ".tmp-")) and path.is_dir()
            if debris and now - _last_change(path) >= grace:
                shutil.rmtree(path, ignore_errors=True)
                removed += 1
    return removed


def _last_change(folder: Path) -> float:
    """The newest mtime of a folder and its direct entries (an upload being received
    changes its .part file)."""
    times = [folder.stat().st_mtime]
    for entry in _listdir(folder):
        try:
            times.append(entry.lstat().st_mtime)
        except FileNotFoundError:
            continue
    return max(times)


def _listdir(folder: Path) -> list[Path]:
    try:
        return list(folder.iterdir())
    except FileNotFoundError:
        return []
