"""The advisor lane: a worker's loop over the short tasks the API awaits for its callers.

- ADVISE: scan the dataset, measure it and advise (advise_dataset, through the advice
  cache: the same data and options answer from it without measuring); the result is the
  Advice in graft.advisor.codec's versioned JSON, which the API converts to the
  AdviseResponse (the lane speaks the domain, never protobuf: docs/ARCHITECTURE.md).
- CHECK_UPLOAD: extract and scan an uploaded archive (graft.data.check_upload).
- COMPARE: evaluate two model versions on the candidate's held-out images
  (graft.compare.run; the answer is a Comparison's versioned JSON).
- EXPORT: export a model version to ONNX, TorchScript or a Triton repository under the
  shared artifacts folder, checked on real images (graft.export.exporter; the answer is
  the export's folder and record, which the API streams).

Between tasks, every `upload_sweep_seconds`, the lane sweeps: unused uploads expire and
the extracted-archive cache is bounded (graft.advisor.housekeeping says why here).

A task is claimed under a lease. Its caller may go away or run out of time: the API then
marks the task cancelled (or its deadline passes), and the work stops at its next
checkpoint (graft.advisor.cancel), within a second or two, because `should_stop` renews the
lease at most every STOP_CHECK_SECONDS and learns of either there. Errors keep their kind and
field violations (graft.errors.error_to_dict), so the RPC fails exactly as if the server
had done the work itself.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from typing import Any

import torch

from graft import errors
from graft.advisor.advice_cache import advise_cached
from graft.advisor.cancel import AdviceCancelled, cancellable, checkpoint
from graft.advisor.codec import advice_to_json
from graft.advisor.housekeeping import Housekeeping
from graft.compare.run import run_comparison
from graft.config import Config
from graft.data import check_upload, open_dataset
from graft.domain import DatasetRef, JobState, Task, TaskKind
from graft.export.exporter import run_export
from graft.observability.logs import log_context
from graft.store import JobStore

log = logging.getLogger(__name__)

STOP_CHECK_SECONDS = 0.5
KINDS = (TaskKind.ADVISE, TaskKind.CHECK_UPLOAD, TaskKind.COMPARE, TaskKind.EXPORT)


class TaskLease:
    """`should_stop()` for a running task: True once the worker is stopping, or the store
    says the task is no longer ours (cancelled, past its deadline, or reclaimed). Each call
    past STOP_CHECK_SECONDS since the last renews the lease, so checkpoints can call it
    freely."""

    def __init__(
        self, store: JobStore, task: Task, worker_id: str, lease_seconds: float, stopping: Any
    ) -> None:
        self.store, self.task_id, self.worker_id = store, task.task_id, worker_id
        self.lease_seconds = lease_seconds
        self.stopping = stopping
        self.lost = False
        self._checked = time.monotonic()
        self._lock = threading.Lock()

    def should_stop(self) -> bool:
        if self.lost or self.stopping.is_set():
            return True
        with self._lock:
            if time.monotonic() - self._checked < STOP_CHECK_SECONDS:
                return False
            self._checked = time.monotonic()
            try:
                self.lost = not self.store.renew_task_lease(
                    self.task_id, self.worker_id, self.lease_seconds
                )
            except errors.Unavailable as exc:  # a store hiccup: carry on until the lease ends
                log.warning("task %s: lease renewal failed: %s", self.task_id, exc.message)
        return self.lost


class AdvisorLane:
    def __init__(
        self,
        config: Config,
        store: JobStore,
        worker_id: str,
        device: torch.device,
        stopping: threading.Event,
        on_task: Callable[[str, str, float], None] | None = None,
    ) -> None:
        self.config, self.store, self.worker_id = config, store, worker_id
        self.device = device
        self.stopping = stopping
        self.on_task = on_task or (lambda kind, outcome, seconds: None)  # metrics hook
        self.busy_task = ""
        self.housekeeping = Housekeeping(config, store)

    def run(self) -> None:
        log.info("advisor lane of %s polling for tasks", self.worker_id)
        while not self.stopping.is_set():
            self.housekeeping.run_if_due()
            task = self.store.claim_task(
                self.worker_id, os.getpid(), self.config.lease_seconds, KINDS
            )
            if task is None:
                self.stopping.wait(min(0.2, self.config.poll_seconds))
                continue
            self.busy_task = task.task_id
            with log_context(task_id=task.task_id, worker_id=self.worker_id):
                self.run_task(task)
            self.busy_task = ""

    def run_task(self, task: Task) -> None:
        started = time.monotonic()
        lease = TaskLease(
            self.store, task, self.worker_id, self.config.lease_seconds, self.stopping
        )
        kind = task.kind.name.lower()
        try:
            with cancellable(lease.should_stop):
                result = self._do(task)
            state, outcome, detail = JobState.SUCCEEDED, "succeeded", None
        except AdviceCancelled:
            state, outcome, detail = JobState.CANCELLED, "cancelled", None
        except errors.GraftError as exc:
            state, outcome, detail = JobState.FAILED, "failed", errors.error_to_dict(exc)
            log.info("task %s (%s) failed: %s", task.task_id, kind, exc.message)
        except Exception as exc:  # a bug or an OOM in the work must end the task, not the lane
            log.exception("task %s (%s) failed unexpectedly", task.task_id, kind)
            state, outcome = JobState.FAILED, "failed"
            detail = errors.error_to_dict(
                errors.GraftError(f"internal error in the advisor: {type(exc).__name__}: {exc}")
            )
        if state != JobState.SUCCEEDED:
            result = {}
        seconds = time.monotonic() - started
        try:
            self.store.finish_task(
                task.task_id, self.worker_id, state, result=result, error_detail=detail
            )
        except errors.FailedPrecondition as exc:  # reclaimed after our lease lapsed
            log.warning("task %s: %s", task.task_id, exc.message)
        self.on_task(kind, outcome, seconds)
        log.info("task %s (%s) %s in %.1f s", task.task_id, kind, outcome, seconds)

    def _do(self, task: Task) -> dict[str, Any]:
        if task.kind == TaskKind.CHECK_UPLOAD:
            info = check_upload(self.config, task.request)
            return {
                "size_bytes": info.size_bytes,
                "images": info.images,
                "classes": info.classes,
                "skipped_files": info.skipped_files,
                "extracted_bytes": info.extracted_bytes,
            }
        if task.kind == TaskKind.ADVISE:
            return self._advise(task.request["advise_request"])
        if task.kind == TaskKind.COMPARE:
            return run_comparison(self.config, self.store, task.request, self.device)
        if task.kind == TaskKind.EXPORT:
            return run_export(self.config, self.store, task.request, checkpoint)
        raise errors.InvalidArgument.of("kind", f"this worker cannot run {task.kind.name} tasks")

    def _advise(self, request: dict[str, Any]) -> dict[str, Any]:
        # The API stores the AdviseRequest as JSON with the proto's field names (unset
        # fields left out); the answer is the Advice itself, in graft.advisor.codec's
        # versioned JSON, which the API converts to the response.
        ref = request.get("dataset", {})
        dataset_ref = DatasetRef(
            uri=ref.get("uri", "").strip(), dataset_id=ref.get("dataset_id", "").strip()
        )
        dataset = open_dataset(dataset_ref, self.config)
        checkpoint()
        advice = advise_cached(
            dataset,
            config=self.config,
            candidates=[c.strip() for c in request.get("candidate_backbones", [])],
            small_threshold=int(request.get("small_dataset_threshold", 0)) or None,
            max_per_class=int(request.get("max_images_per_class", 0)) or None,
            max_images=int(request.get("max_images", 0)) or None,
            device=self.device,
        )
        return {"advice": advice_to_json(advice)}
