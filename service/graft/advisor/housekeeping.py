"""The advisor lane's housekeeping sweep, every `upload_sweep_seconds` between tasks:

1. uploads unused for `upload_ttl_seconds` expire: the store forgets them in one
   transaction (never one a queued or running job, an Advise or its own check names),
   then their folders are removed;
2. upload folders the store does not know: an upload older than upload records
   (its meta file names no tenant) is adopted as the default tenant's, so that it counts
   against a quota, is listed, can be deleted and expires; one that was deleted but whose
   folder survived a crash, or whose check never ended, is removed (after a day's grace:
   an upload being received has no record yet);
3. the debris of interrupted removals and extractions is removed;
4. the extracted-archive cache of data-root archives is bounded (graft.data.retention).

Why the advisor lane and not the API server: removing a folder of 100 000 extracted
images is work, and the API server does none (DESIGN: it validates and delegates); the
advisor is the worker that extracts uploads, so it sees the same data directory; and it
runs wherever uploads can be used at all (without one no upload is ever checked). Several
advisor lanes may sweep at once: the store decides which uploads expire, in one
transaction, so each is removed once.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from graft import errors
from graft.config import Config
from graft.data.retention import (
    cache_digests_in_use,
    evict_extracted,
    remove_debris,
    upload_folders,
)
from graft.data.uploads import remove_upload
from graft.domain import DEFAULT_TENANT
from graft.store import JobStore

log = logging.getLogger(__name__)

DEBRIS_GRACE_SECONDS = 24 * 3600.0  # an unknown upload folder younger than this may be mid-upload
CACHE_MIN_IDLE_SECONDS = 3600.0  # a cache entry used this recently is never evicted


@dataclass
class SweepReport:
    """What one sweep removed."""

    expired: list[str]
    expired_bytes: int = 0
    adopted: int = 0
    removed_folders: int = 0
    evicted: int = 0
    evicted_bytes: int = 0


class Housekeeping:
    """`run_if_due()` between tasks; `run()` sweeps now. `clock` is epoch seconds (tests
    move it instead of waiting)."""

    def __init__(
        self, config: Config, store: JobStore, clock: Callable[[], float] = time.time
    ) -> None:
        self.config, self.store, self.clock = config, store, clock
        self._next = 0.0  # the first sweep runs at once

    def run_if_due(self) -> SweepReport | None:
        if self.clock() < self._next:
            return None
        try:
            return self.run()
        except (errors.GraftError, OSError) as exc:  # the store or the disk: try next time
            log.warning("housekeeping sweep failed: %s", exc)
        except Exception:  # a bug here must not stop the lane's tasks
            log.exception("housekeeping sweep failed unexpectedly")
        return None

    def run(self) -> SweepReport:
        now = self.clock()
        self._next = now + self.config.upload_sweep_seconds
        report = SweepReport(expired=[])
        if self.config.upload_ttl_seconds:
            for upload in self.store.expire_uploads(now - self.config.upload_ttl_seconds):
                remove_upload(upload.dataset_id, self.config)
                report.expired.append(upload.dataset_id)
                report.expired_bytes += upload.stored_bytes
                log.info(
                    "upload %s of tenant %s expired (unused since %.0f; %d bytes freed)",
                    upload.dataset_id,
                    upload.tenant,
                    upload.last_used,
                    upload.stored_bytes,
                )
        self._unknown_folders(now, report)
        report.removed_folders += remove_debris(self.config, now=now, grace=DEBRIS_GRACE_SECONDS)
        keep = cache_digests_in_use(self.store.active_datasets(), self.config)
        evicted = evict_extracted(self.config, keep=keep, now=now, min_idle=CACHE_MIN_IDLE_SECONDS)
        report.evicted = len(evicted)
        report.evicted_bytes = sum(e.size_bytes for e in evicted)
        return report

    def _unknown_folders(self, now: float, report: SweepReport) -> None:
        known = {u.dataset_id for u in self.store.list_uploads()}
        for folder in upload_folders(self.config):
            if folder.dataset_id in known or now - folder.last_change < DEBRIS_GRACE_SECONDS:
                continue
            meta = folder.meta
            if meta is not None and "tenant" not in meta:  # from before upload records
                try:
                    self.store.add_upload(
                        folder.dataset_id,
                        str(self.config.uploads_dir / folder.dataset_id),
                        int(str(meta.get("size_bytes", 0))),
                        str(meta.get("sha256", "")),
                        DEFAULT_TENANT,
                        filename=str(meta.get("filename", "")),
                    )
                except (ValueError, errors.AlreadyExists) as exc:
                    log.warning("upload %s not adopted: %s", folder.dataset_id, exc)
                    continue
                report.adopted += 1
                log.info("adopted upload %s (older than upload records)", folder.dataset_id)
                continue
            remove_upload(folder.dataset_id, self.config)
            report.removed_folders += 1
            log.info("removed upload folder %s: no record of it in the store", folder.dataset_id)
