"""`graft worker`: a worker process with one or two lanes (`Config.lanes`).

The trainer lane claims queued jobs from the store with a lease it renews, scans the
dataset, completes the plan (defaults, or Advise when StartFineTune had none), trains (CUDA
when present, else CPU), checkpoints every epoch, appends progress events and registers the
trained model. A job whose lease expired (its worker died) is claimed again by the next
worker and resumes from its last checkpoint. The advisor lane (graft.advisor.lane) runs the
short tasks the API awaits: Advise and upload checks.

SIGTERM/SIGINT: the worker stops its job right after the next epoch checkpoint (or, when
that takes longer than `stop_timeout_seconds`, at the next step, keeping the previous
checkpoint), hands the job back to the queue, and exits 0. Nothing is lost: the next worker
resumes the job from that checkpoint.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import shutil
import signal
import socket
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from graft import errors
from graft.advisor.advice_cache import advise_cached
from graft.advisor.cancel import AdviceCancelled, cancellable
from graft.advisor.lane import AdvisorLane
from graft.backbones import DEFAULT_BACKBONE, get_spec
from graft.config import Config
from graft.data import Sample, ScannedDataset, open_dataset, split_dataset
from graft.domain import EventKind, Job, JobState, ProgressEvent, TrainingPlan
from graft.observability.logs import log_context, setup_logging
from graft.observability.metrics import WorkerMetrics, serve_metrics
from graft.plans import resolve_plan, validate_plan
from graft.registry import ModelRegistry
from graft.reports.build import prepare as prepare_report
from graft.store import open_store
from graft.training.errors import TrainingPreempted
from graft.training.launch import select_devices, train_on_devices
from graft.training.loop import TrainingCancelled, TrainResult
from graft.worker.card import model_card
from graft.worker.lease import LeaseKeeper

log = logging.getLogger(__name__)


class Worker:
    """One worker process: its lanes, its heartbeat, and the trainer lane's jobs."""

    def __init__(
        self,
        config: Config,
        worker_id: str | None = None,
        metrics: WorkerMetrics | None = None,
    ) -> None:
        self.config = config
        self.worker_id = worker_id or f"{socket.gethostname()}:{os.getpid()}"
        self.store = open_store(config)
        self.registry = ModelRegistry(self.store, config.registry_dir)
        # Several devices ("cuda:0,cuda:1"): a fine-tune job trains on all of them, one
        # process each (graft.training.launch); the advisor lane uses the first.
        self.devices = select_devices(config.device)
        self.device = self.devices[0]
        self.metrics = metrics or WorkerMetrics(cuda=self.device.type == "cuda")
        self.stopping = threading.Event()
        self.stop_requested_at = 0.0
        self.busy_job = ""
        self._heartbeats = threading.Thread(target=self._heartbeat_loop, name="heartbeat")
        self._heartbeats.daemon = True

    def request_stop(self) -> None:
        if not self.stopping.is_set():
            self.stop_requested_at = time.monotonic()
            self.stopping.set()
            self.metrics.ready.set(0)

    def heartbeat(self) -> None:
        """Tell the store (and /metrics) this worker is alive, and what it is doing."""
        try:
            self.store.heartbeat_worker(
                self.worker_id,
                os.getpid(),
                socket.gethostname(),
                {"device": ",".join(map(str, self.devices)), "job_id": self.busy_job},
            )
        except errors.GraftError as exc:
            log.warning("heartbeat failed: %s", exc.message)
            self.metrics.ready.set(0)
            return
        self.metrics.last_heartbeat.set(time.time())
        self.metrics.ready.set(0 if self.stopping.is_set() else 1)

    def _heartbeat_loop(self) -> None:
        while not self.stopping.wait(self.config.heartbeat_seconds):
            self.heartbeat()

    def run(self) -> int:
        lanes = set(self.config.lanes)
        log.info(
            "worker %s (%s) on %s polling %s",
            self.worker_id,
            "+".join(sorted(lanes)),
            ",".join(map(str, self.devices)),
            self.config.store_name,
        )
        self.heartbeat()
        self._heartbeats.start()
        advisor = AdvisorLane(
            self.config,
            self.store,
            self.worker_id,
            self.device,
            self.stopping,
            on_task=self.metrics.task_finished,
        )
        if "trainer" not in lanes:
            advisor.run()
        else:
            thread = None
            if "advisor" in lanes:
                thread = threading.Thread(target=advisor.run, name="advisor-lane", daemon=True)
                thread.start()
            self.run_trainer()
            if thread is not None:
                thread.join()
        self.metrics.ready.set(0)
        log.info("worker %s stopped", self.worker_id)
        return 0

    def run_trainer(self) -> None:
        while not self.stopping.is_set():
            job = self.store.claim_job(self.worker_id, self.config.lease_seconds)
            if job is None:
                self.stopping.wait(self.config.poll_seconds)
                continue
            self.busy_job = job.job_id
            self.metrics.busy.set(1)
            self.heartbeat()
            with log_context(job_id=job.job_id, worker_id=self.worker_id):
                self.run_job(job)
            self.busy_job = ""
            self.metrics.busy.set(0)

    def _stop_now(self) -> bool:
        """Past the stop timeout: do not wait for the epoch's checkpoint any longer."""
        return (
            self.stopping.is_set()
            and time.monotonic() - self.stop_requested_at > self.config.stop_timeout_seconds
        )

    def run_job(self, job: Job) -> None:
        def emit(event: ProgressEvent) -> None:
            self.store.append_event(job.job_id, dataclasses.replace(event, state=JobState.RUNNING))

        started = time.monotonic()
        strategy = job.plan.strategy.name.lower()
        checkpoint_dir = self.config.checkpoints_dir / job.job_id
        log.info("job %s: %s of %s", job.job_id, strategy, job.plan.backbone)
        with LeaseKeeper(self.store, job, self.worker_id, self.config.lease_seconds) as lease:

            def should_stop() -> bool:
                return lease.should_stop() or self._stop_now()

            try:
                self._train_and_register(job, emit, checkpoint_dir, should_stop)
                outcome = "succeeded"
            except (TrainingCancelled, TrainingPreempted) as exc:
                if lease.lost.is_set():
                    log.warning("job %s: lease lost; another worker will resume it", job.job_id)
                    return
                if lease.cancelled.is_set():
                    self.store.finish_job(job.job_id, self.worker_id, JobState.CANCELLED)
                    outcome = "cancelled"
                else:  # this worker is stopping: hand the job back, keep its checkpoint
                    self.store.release_job(
                        job.job_id, self.worker_id, f"worker shutting down ({exc})"
                    )
                    log.info("job %s released for resumption: %s", job.job_id, exc)
                    self.metrics.job_finished(strategy, "released", time.monotonic() - started)
                    return
            except errors.GraftError as exc:
                log.warning("job %s failed: %s", job.job_id, exc.message)
                self.store.finish_job(
                    job.job_id,
                    self.worker_id,
                    JobState.FAILED,
                    error=exc.message,
                    error_detail=errors.error_to_dict(exc),
                )
                outcome = "failed"
            except Exception as exc:  # a crash in training must end the job, not the worker
                log.exception("job %s failed unexpectedly", job.job_id)
                message = f"{type(exc).__name__}: {exc}"
                self.store.finish_job(job.job_id, self.worker_id, JobState.FAILED, error=message)
                outcome = "failed"
        self.metrics.job_finished(strategy, outcome, time.monotonic() - started)
        log.info("job %s %s in %.1f s", job.job_id, outcome, time.monotonic() - started)
        shutil.rmtree(checkpoint_dir, ignore_errors=True)

    def _train_and_register(
        self, job: Job, emit: Any, checkpoint_dir: Path, should_stop: Any
    ) -> None:
        dataset = open_dataset(job.dataset, self.config)
        self.store.set_skipped_files(job.job_id, len(dataset.skipped))
        plan = job.plan
        if not job.plan_resolved:
            plan = self._complete_plan(job, dataset, emit, should_stop)
        train_samples, val_samples = split_dataset(dataset, plan.validation_fraction, plan.seed)
        counts = dataset.counts()
        emit(
            ProgressEvent(
                kind=EventKind.MESSAGE,
                state=JobState.RUNNING,
                message=(
                    f"dataset: {len(dataset.samples)} images in {len(dataset.classes)} classes "
                    f"({min(counts.values())}-{max(counts.values())} per class), "
                    f"{len(dataset.skipped)} files skipped; {len(train_samples)} train / "
                    f"{len(val_samples)} validation; {plan.strategy.name.lower()} of "
                    f"{plan.backbone} at {plan.image_size}px on "
                    + ", ".join(map(str, self.devices))
                ),
            )
        )
        result = train_on_devices(
            self.devices,
            job_id=job.job_id,
            plan=plan,
            classes=dataset.classes,
            train_samples=train_samples,
            val_samples=val_samples,
            dataset_fingerprint=dataset.fingerprint,
            weights_dir=self.config.weights_dir,
            checkpoint_dir=checkpoint_dir,
            emit=emit,
            should_stop=should_stop,
            observer=self.metrics,
            stop_at_checkpoint=self.stopping.is_set,
        )
        if should_stop():
            raise TrainingCancelled()
        self._register(job, plan, dataset, result, emit, val_samples)

    def _complete_plan(
        self, job: Job, dataset: ScannedDataset, emit: Any, should_stop: Any
    ) -> TrainingPlan:
        """The plan the job trains: the caller's with its defaults filled in for this
        dataset, or, when StartFineTune had no plan, exactly the advised one. Recorded in the
        job before training starts, so a resumed attempt trains the same plan."""
        if job.advise_first:
            emit(
                ProgressEvent(
                    kind=EventKind.MESSAGE,
                    state=JobState.RUNNING,
                    message="no plan given: advising one (measuring the dataset unless it "
                    "was advised before)",
                )
            )
            try:
                with cancellable(should_stop):
                    advice = advise_cached(dataset, config=self.config, device=self.device)
            except AdviceCancelled as exc:
                raise TrainingCancelled() from exc
            plan = advice.plan
            if advice.from_cache:
                emit(
                    ProgressEvent(
                        kind=EventKind.MESSAGE,
                        state=JobState.RUNNING,
                        message="the plan was read from the advice cache: this dataset was "
                        "advised before",
                    )
                )
        else:
            spec = get_spec(job.plan.backbone or DEFAULT_BACKBONE)
            plan = resolve_plan(
                job.plan,
                spec,
                num_train_images=len(dataset.samples),
                median_size=dataset.median_size,
            )
        validate_plan(plan, get_spec(plan.backbone))
        self.store.set_job_plan(job.job_id, self.worker_id, plan)
        return plan

    def _register(
        self,
        job: Job,
        plan: TrainingPlan,
        dataset: ScannedDataset,
        result: TrainResult,
        emit: Any,
        val_samples: Sequence[Sample],
    ) -> None:
        card = model_card(job, plan, dataset, result, self.device)
        # Calibration and the report (graft.reports.build; never raises): the report's files
        # land with the version, or a note saying why there is none.
        extras = prepare_report(
            job=job,
            card=card,
            dataset=dataset,
            val_samples=val_samples,
            model=result.model,
            device=self.device,
            store=self.store,
            config=self.config,
            validation_logits=result.validation_logits,
        )
        emit(ProgressEvent(EventKind.MESSAGE, JobState.RUNNING, message=extras.message()))
        version = self.registry.register(
            name=job.model_name,
            state_dict=result.model.state_dict(),
            card=dataclasses.replace(card, calibration=extras.calibration),
            tenant=job.tenant,  # the worker acts for the job's tenant: the model is theirs
            files=extras.files,
        )
        emit(
            ProgressEvent(
                kind=EventKind.MESSAGE,
                state=JobState.RUNNING,
                message=(
                    f"registered {version.name} version {version.version} "
                    f"(validation accuracy {result.metrics.accuracy:.3f})"
                ),
            )
        )
        self.store.finish_job(
            job.job_id,
            self.worker_id,
            JobState.SUCCEEDED,
            model_version=version.version,
            metrics=result.metrics,
        )


def run_worker(config: Config, worker_id: str | None = None) -> int:
    setup_logging(config.log_format, config.log_level, process="worker")
    try:
        worker = Worker(config, worker_id)
    except errors.GraftError as exc:  # the store is unreachable, or newer than this code
        log.error("cannot open the job store %s: %s", config.store_name, exc.message)
        return 1

    def on_signal(signum: int, frame: object) -> None:
        log.info("worker received signal %d: stopping at the next checkpoint", signum)
        worker.request_stop()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    if config.worker_metrics_port:
        try:
            port = serve_metrics(worker.metrics.registry, config.worker_metrics_port, config.host)
            log.info("worker metrics on http://%s:%d/metrics", config.host, port)
        except OSError as exc:
            log.error("worker metrics port %d unavailable: %s", config.worker_metrics_port, exc)
    return worker.run()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="graft-worker", description=__doc__)
    parser.add_argument("--config-file", type=Path, required=True)
    parser.add_argument("--worker-id")
    args = parser.parse_args(argv)
    config = Config.from_dict(json.loads(args.config_file.read_text()))
    return run_worker(config, args.worker_id)
