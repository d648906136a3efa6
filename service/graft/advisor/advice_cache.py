"""Advice cached by what decides it, so asking again does not measure again.

Advise measures a dataset for tens of seconds (docs/ADVISOR.md); the answer depends only on
the dataset's content, the request's options, the advisor's settings, which backbones have
weights here, the device, and the advisor's code. The key is a sha256 over exactly those:

- the dataset's fingerprint (graft.data.scan: the sorted relative paths, labels and sha256
  of every file's bytes; a copy of the same data elsewhere has the same one, any changed
  image, name or label gives another),
- the options as the advisor resolves them (candidates in order, the small threshold and
  the sample caps after their defaults),
- every `advise_*` setting of the Config and `small_dataset_threshold`, `max_image_pixels`,
- the backbones whose weights are present, the device type,
- `CACHE_FORMAT`, the codec's version and graft's version (a new release measures again:
  its advisor may answer differently).

An entry is the Advice in graft.advisor.codec's versioned JSON, one file per key under
`<data_dir>/advice-cache/`, written atomically (a temporary file renamed into place), at
most `max_entries` files, least recently used evicted first (a hit touches its file). A
file that does not decode is a miss, logged and removed. The measured figures in a cached
answer (speed, time estimates) are those of the run that measured it; `from_cache` says so.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from graft import __version__
from graft.advisor import codec
from graft.advisor.advice import Advice
from graft.advisor.advise import advise_dataset
from graft.backbones import backbone_statuses
from graft.config import Config
from graft.data import ScannedDataset
from graft.errors import GraftError

log = logging.getLogger(__name__)

# Bump when the advisor answers differently within a release. 3: feature-extraction plans
# train about 750 head steps instead of 30 epochs (and the cut re-checked on large datasets,
# which came without a bump).
CACHE_FORMAT = 3
CACHE_DIR = "advice-cache"
# Config fields besides the advise_* ones that change an answer.
_CONFIG_FIELDS = ("small_dataset_threshold", "max_image_pixels")


class AdviceCache:
    """Advice by key, as files under `root` (see the module doc)."""

    def __init__(self, root: Path, max_entries: int = 256) -> None:
        self.root = Path(root)
        self.max_entries = max_entries

    @classmethod
    def for_config(cls, config: Config) -> AdviceCache:
        return cls(Path(config.data_dir) / CACHE_DIR)

    def _path(self, key: str) -> Path:
        return self.root / f"{key}.json"

    def get(self, key: str) -> Advice | None:
        path = self._path(key)
        try:
            text = path.read_text()
        except FileNotFoundError:
            return None
        try:
            advice = codec.advice_from_json(text)
        except (GraftError, ValueError, KeyError, TypeError) as exc:
            log.warning("advice cache entry %s is unreadable (%s); measuring again", path, exc)
            path.unlink(missing_ok=True)
            return None
        os.utime(path)  # recently used
        return dataclasses.replace(advice, from_cache=True)

    def put(self, key: str, advice: Advice) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.root, prefix=".tmp-", suffix=".json")
        try:
            with os.fdopen(fd, "w") as f:
                f.write(codec.advice_to_json(dataclasses.replace(advice, from_cache=False)))
            os.replace(tmp, self._path(key))
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        self._evict()

    def _evict(self) -> None:
        entries = sorted(self.root.glob("*.json"), key=_mtime)
        for path in entries[: max(0, len(entries) - self.max_entries)]:
            path.unlink(missing_ok=True)


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except FileNotFoundError:
        return 0.0


def advice_key(
    fingerprint: str,
    config: Config,
    device: torch.device | str,
    *,
    candidates: Sequence[str] = (),
    small_threshold: int | None = None,
    max_per_class: int | None = None,
    max_images: int | None = None,
) -> str:
    """The cache key of an Advise of the dataset with `fingerprint` (see the module doc)."""
    settings = {
        f.name: getattr(config, f.name)
        for f in dataclasses.fields(config)
        if f.name.startswith("advise_") or f.name in _CONFIG_FIELDS
    }
    ready = sorted(s.name for s in backbone_statuses(config.weights_dir) if s.ready)
    doc = {
        "format": CACHE_FORMAT,
        "codec": codec.VERSION,
        "graft": __version__,
        "fingerprint": fingerprint,
        "candidates": list(candidates),
        "small_threshold": small_threshold or config.small_dataset_threshold,
        "max_per_class": max_per_class or config.advise_max_per_class,
        "max_images": max_images or config.advise_max_images,
        "settings": settings,
        "ready_backbones": ready,
        "device": torch.device(device).type,
    }
    return hashlib.sha256(json.dumps(doc, sort_keys=True, default=str).encode()).hexdigest()


def advise_cached(
    ds: ScannedDataset,
    *,
    config: Config,
    device: torch.device | str = "cpu",
    cache: AdviceCache | None = None,
    candidates: Sequence[str] = (),
    small_threshold: int | None = None,
    max_per_class: int | None = None,
    max_images: int | None = None,
) -> Advice:
    """`advise_dataset`'s answer, from the cache when the same question was answered
    before (`from_cache` then True), else measured and stored."""
    cache = cache or AdviceCache.for_config(config)
    options: dict[str, Any] = {
        "candidates": candidates,
        "small_threshold": small_threshold,
        "max_per_class": max_per_class,
        "max_images": max_images,
    }
    key = advice_key(ds.fingerprint, config, device, **options)
    cached = cache.get(key)
    if cached is not None:
        log.info("advice for dataset %s answered from the cache", ds.fingerprint[:12])
        return cached
    advice = advise_dataset(ds, config=config, device=device, **options)
    cache.put(key, advice)
    return advice
