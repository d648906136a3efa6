"""Start one job's training on several devices of this host (distributed.py does the
training's part): the calling process is rank 0, one spawned process per further device.

Rank 0 is the caller's own process on purpose: the job's lease, its progress events, the
cancellation and shutdown signals and the checkpoint directory are the worker's, and stay
with it. The spawned ranks get the job's plan and samples and nothing else: events and an
observer that go nowhere, no say in stopping, no checkpoint to write. They meet rank 0
through a TCPStore it holds on 127.0.0.1 (a port the system picks), so all ranks run on one
host; several hosts joining one job is not done (docs/TRAINING.md § Several devices).

When a spawned rank fails, rank 0's next collective fails at once (the rank's connections
close) and the job fails with the rank's error; when rank 0 stops (an error, a cancellation
its ranks follow, a shutdown), it leaves the group, so the others fail or stop at their next
collective, and any still running after a grace period are killed.
"""

from __future__ import annotations

import logging
import signal
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from graft.domain import ProgressEvent, Strategy
from graft.errors import GraftError
from graft.training.distributed import DistributedRank, backend_for
from graft.training.engine import select_device
from graft.training.errors import TrainingCancelled, TrainingPreempted
from graft.training.loop import TrainResult, train
from graft.training.progress import Emit, Progress, TrainingObserver

log = logging.getLogger(__name__)

_READY = "graft/ready/{}"  # the store key a spawned rank sets once it is up


def select_devices(preference: str) -> list[torch.device]:
    """The devices a worker's `--device` names: one ("", "cpu", "cuda:1"; "" is CUDA when
    available, else the CPU), or several separated by commas ("cuda:0,cuda:1"; "cpu,cpu"
    runs two CPU ranks). A CUDA device named twice is refused: NCCL needs one per rank."""
    names = [name.strip() for name in preference.split(",")]
    if len(names) > 1 and not all(names):
        raise ValueError(f"device list {preference!r} has an empty entry")
    devices = [select_device(name) for name in names]
    cuda = [d for d in devices if d.type == "cuda"]
    if len(set(cuda)) < len(cuda) or (cuda and len(cuda) < len(devices)):
        raise ValueError(f"device list {preference!r}: each rank needs a CUDA device of its own")
    return devices


def train_on_devices(devices: Sequence[torch.device], **job: Any) -> TrainResult:
    """`train(**job)` on `devices[0]`, or on all of `devices` with DataParallelTraining.
    Feature extraction stays on one: its head trains on cached features in milliseconds.
    At most one rank per image of a batch (and of the training set)."""
    plan = job["plan"]
    world = min(len(devices), plan.batch_size, len(job["train_samples"]))
    if world < 2 or plan.strategy == Strategy.FEATURE_EXTRACTION:
        return train(device=devices[0], **job)
    return DataParallelTraining(devices[:world]).train(**job)


@dataclass(frozen=True)
class RankReport:
    """How a spawned rank ended."""

    rank: int
    steps: int  # training steps it took part in
    checkpoints: int  # checkpoints it wrote: always 0, rank 0 writes them
    outcome: str  # "finished", "cancelled", "preempted", or "failed: <error>"


class StepCounter:
    """A TrainingObserver that counts steps and checkpoints and passes every call on."""

    def __init__(self, inner: TrainingObserver | None = None) -> None:
        self.inner, self.steps, self.checkpoints = inner, 0, 0

    def on_epoch_start(self) -> None:
        if self.inner is not None:
            self.inner.on_epoch_start()

    def on_step(self, images: int) -> None:
        self.steps += 1
        if self.inner is not None:
            self.inner.on_step(images)

    def on_epoch(self, seconds: float) -> None:
        if self.inner is not None:
            self.inner.on_epoch(seconds)

    def on_checkpoint(self, seconds: float) -> None:
        self.checkpoints += 1
        if self.inner is not None:
            self.inner.on_checkpoint(seconds)


@dataclass(frozen=True)
class RankJob:
    """What a spawned rank is given (pickled): where to meet, its device, and train()'s
    arguments other than the device, events, observer and stop conditions."""

    rank: int
    world_size: int
    port: int
    device: torch.device
    threads: int
    timeout: float
    job: dict[str, Any]


class DataParallelTraining:
    """One job trained on `devices` (two or more, one rank each) with DDP. `timeout`
    (seconds) bounds each collective and the rendezvous; `start_timeout` the spawned ranks'
    start. After `train`, `reports` says how each spawned rank ended."""

    def __init__(
        self,
        devices: Sequence[torch.device],
        *,
        timeout: float = 600.0,
        start_timeout: float = 120.0,
    ) -> None:
        if len(devices) < 2:
            raise ValueError("data-parallel training needs two devices or more")
        self.devices, self.timeout, self.start_timeout = list(devices), timeout, start_timeout
        self.reports: list[RankReport] = []

    def train(
        self,
        *,
        emit: Emit,
        should_stop: Callable[[], bool],
        observer: TrainingObserver | None = None,
        stop_at_checkpoint: Callable[[], bool] = lambda: False,
        **job: Any,
    ) -> TrainResult:
        """`loop.train(**job, emit=…, should_stop=…, …)` with this process as rank 0."""
        world = len(self.devices)
        store = dist.TCPStore(
            "127.0.0.1",
            0,
            world,
            is_master=True,
            timeout=timedelta(seconds=self.timeout),
            wait_for_workers=False,
        )
        ctx = mp.get_context("spawn")
        queue = ctx.SimpleQueue()
        threads = torch.get_num_threads()
        procs = [
            ctx.Process(
                target=run_rank,
                args=(RankJob(r, world, store.port, d, threads, self.timeout, job), queue),
                name=f"graft-rank-{r}",
                daemon=True,
            )
            for r, d in enumerate(self.devices[1:], start=1)
        ]
        for p in procs:
            p.start()
        try:
            self._await_ranks(store, procs)
            result = self._train_rank0(
                store, job, emit, should_stop, StepCounter(observer), stop_at_checkpoint
            )
        except BaseException as exc:
            self.reports = _finish(procs, queue, grace=10.0)
            failed = next((r for r in self.reports if r.outcome.startswith("failed")), None)
            expected = (GraftError, TrainingCancelled, TrainingPreempted)
            if failed is not None and not isinstance(exc, expected):
                raise RuntimeError(f"training rank {failed.rank} {failed.outcome}") from exc
            raise
        self.reports = _finish(procs, queue, grace=60.0)
        log.info("training ranks ended: %s", self.reports)
        return result

    def _train_rank0(
        self,
        store: dist.Store,
        job: dict[str, Any],
        emit: Emit,
        should_stop: Callable[[], bool],
        observer: StepCounter,
        stop_at_checkpoint: Callable[[], bool],
    ) -> TrainResult:
        device = self.devices[0]
        rank = DistributedRank.join(store, 0, len(self.devices), device, self.timeout)
        try:
            plan = job["plan"]
            Progress(job["job_id"], emit, total_epochs=plan.epochs, interval=0.0).message(
                f"data-parallel training on {len(self.devices)} processes "
                f"({', '.join(map(str, self.devices))}; {backend_for(device)}): each step's "
                f"batch of {plan.batch_size} images is split between them"
            )
            return train(
                device=device,
                emit=emit,
                should_stop=should_stop,
                observer=observer,
                stop_at_checkpoint=stop_at_checkpoint,
                ddp=rank,
                **job,
            )
        finally:
            rank.close()

    def _await_ranks(self, store: dist.Store, procs: list[Any]) -> None:
        """Until every spawned rank is up (it has imported torch and this package): then
        the process group forms at once. A rank that exits first fails the job now, not
        after the rendezvous timeout."""
        deadline = time.monotonic() + self.start_timeout
        keys = [_READY.format(r) for r in range(1, len(procs) + 1)]
        while not store.check(keys):
            dead = next((p for p in procs if p.exitcode is not None), None)
            if dead is not None:
                raise RuntimeError(f"{dead.name} exited (code {dead.exitcode}) before starting")
            if time.monotonic() > deadline:
                raise TimeoutError(f"training ranks not started in {self.start_timeout:.0f} s")
            time.sleep(0.05)


def _finish(procs: list[Any], queue: Any, *, grace: float) -> list[RankReport]:
    """Wait up to `grace` seconds for the spawned ranks, kill those still running, and
    collect their reports (a rank that reported nothing died: its exit code says how)."""
    deadline = time.monotonic() + grace
    for p in procs:
        p.join(max(0.0, deadline - time.monotonic()))
        if p.is_alive():
            log.warning("%s did not end within %.0f s: killing it", p.name, grace)
            p.kill()
            p.join()
    reports: dict[int, RankReport] = {}
    while not queue.empty():
        report = queue.get()
        reports[report.rank] = report
    return [
        reports.get(r, RankReport(r, 0, 0, f"failed: exited with code {p.exitcode}"))
        for r, p in enumerate(procs, start=1)
    ]


def _nowhere(event: ProgressEvent) -> None:
    """A spawned rank's events: rank 0 sends the job's."""


def _never() -> bool:
    """A spawned rank's own stop condition: rank 0 decides (DistributedRank.agreed)."""
    return False


def run_rank(job: RankJob, reports: Any) -> None:
    """A spawned rank: train its share of the job, then report how it ended. SIGINT and
    SIGTERM sent to the whole process group are ignored: rank 0 decides when to stop."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    torch.set_num_threads(job.threads)
    counter = StepCounter()
    outcome = "finished"
    try:
        timeout = timedelta(seconds=job.timeout)
        store = dist.TCPStore("127.0.0.1", job.port, job.world_size, False, timeout=timeout)
        store.set(_READY.format(job.rank), "1")
        rank = DistributedRank.join(store, job.rank, job.world_size, job.device, job.timeout)
        try:
            train(
                device=job.device,
                emit=_nowhere,
                should_stop=_never,
                observer=counter,
                ddp=rank,
                **job.job,
            )
        finally:
            rank.close()
    except TrainingCancelled:
        outcome = "cancelled"
    except TrainingPreempted:
        outcome = "preempted"
    except Exception as exc:  # reported to rank 0, which fails the job with it
        log.exception("training rank %d failed", job.rank)
        outcome = f"failed: {type(exc).__name__}: {exc}"
    reports.put(RankReport(job.rank, counter.steps, counter.checkpoints, outcome))
