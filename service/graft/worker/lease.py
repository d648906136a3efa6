"""The lease a trainer holds on its job: renewed in the background, with the job's cancel
flag read between renewals (docs/DECISIONS.md § Process model)."""

from __future__ import annotations

import logging
import threading
import time

from graft.domain import Job
from graft.store import JobStore

log = logging.getLogger(__name__)

CANCEL_POLL_SECONDS = 0.25


class LeaseKeeper:
    """Renews a job's lease in the background and notices cancel requests (within
    CANCEL_POLL_SECONDS); training asks `should_stop()` before every step, so a cancel
    takes effect at the first step boundary after that."""

    def __init__(self, store: JobStore, job: Job, worker_id: str, lease_seconds: float) -> None:
        self.store, self.job_id, self.worker_id = store, job.job_id, worker_id
        self.lease_seconds = lease_seconds
        self.cancelled = threading.Event()
        self.lost = threading.Event()
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, name="lease", daemon=True)

    def __enter__(self) -> LeaseKeeper:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._thread.join()

    def _run(self) -> None:
        # The cancel flag is read often (one indexed read), the lease renewed at a third
        # of its length: a cancel must not wait for the next renewal, which is 10 s away
        # at the default lease (seen: a whole further epoch ran after a cancel).
        renew_every = max(CANCEL_POLL_SECONDS, self.lease_seconds / 3)
        renewed = time.monotonic()
        while not self._done.wait(CANCEL_POLL_SECONDS):
            try:
                if time.monotonic() - renewed >= renew_every:
                    if not self.store.renew_lease(self.job_id, self.worker_id, self.lease_seconds):
                        log.error("lost the lease on job %s", self.job_id)
                        self.lost.set()
                        return
                    renewed = time.monotonic()
                if self.store.get_job(self.job_id).cancel_requested:
                    self.cancelled.set()
            except Exception:  # a store hiccup: keep trying until the lease runs out
                log.exception("lease renewal of job %s failed", self.job_id)

    def should_stop(self) -> bool:
        return self.cancelled.is_set() or self.lost.is_set()
