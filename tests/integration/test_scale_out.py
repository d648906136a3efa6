"""Scaled out for real (docs/SCALING.md): two API servers (`graft serve --no-worker`) and
three standalone workers (`graft worker`), each process with its own data directory, all on
one PostgreSQL store and one shared artifacts directory (`--artifacts-dir`), as replicas on
several hosts would be. Twelve jobs go in through both servers, on a data-root folder and on
an upload received by one server; two workers are SIGKILLed mid-epoch (and replaced, as a
Deployment would); every job's progress is followed through the server that did not take
it. Then: every job SUCCEEDED exactly once, each registered exactly one model version, every
stream was contiguous, a model answers Predict through the server its job did not go
through, and a job submitted to one server is cancelled through the other."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import psycopg
import pytest

from graft_client import Client, pb
from graft_client.v1 import adaptation_pb2_grpc as pb_grpc
from graft_devtools.datasets import write_fashion_mnist_folder
from tests.integration.conftest import CLASSES, RunningServer, start_server, stop_server

pytestmark = [pytest.mark.slow, pytest.mark.postgres]

LEASE_SECONDS = 3.0
CLAIMED = re.compile(r"claimed by worker (\S+) \(attempt (\d+)\)")
QUICK = pb.TrainingPlan(strategy=pb.STRATEGY_FEATURE_EXTRACTION, epochs=2, image_size=32)
# Long enough that a STEP event of epoch 2 arrives while the job still has epochs to run.
LONG = pb.TrainingPlan(
    strategy=pb.STRATEGY_PARTIAL_FINE_TUNE,
    trainable_stages=2,
    epochs=5,
    image_size=32,
    batch_size=8,
    early_stopping_patience=100,
)


class Workers:
    """Standalone `graft worker` processes: their own data directories, the shared store
    and artifacts. `kill` SIGKILLs one and starts its replacement."""

    def __init__(self, tmp: Path, store_url: str, artifacts: Path, data_root: Path) -> None:
        self.tmp, self.store_url, self.artifacts, self.data_root = (
            tmp,
            store_url,
            artifacts,
            data_root,
        )
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        self.killed: list[str] = []
        self.lock = threading.Lock()

    def start(self) -> str:
        with self.lock:
            name = f"w{len(self.processes) + 1}"
            data_dir = self.tmp / name
            data_dir.mkdir()
            cmd = [
                sys.executable, "-m", "graft", "worker", "--worker-id", name,
                "--store", self.store_url, "--artifacts-dir", str(self.artifacts),
                "--data-dir", str(data_dir), "--data-root", str(self.data_root),
                "--lease-seconds", str(LEASE_SECONDS), "--metrics-port", "0",
            ]  # fmt: skip
            # Three workers on two cores: one thread each.
            env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
            with (self.tmp / f"{name}.log").open("wb") as log:
                self.processes[name] = subprocess.Popen(
                    cmd, stdout=log, stderr=subprocess.STDOUT, env=env
                )
            return name

    def kill(self, name: str) -> None:
        with self.lock:
            self.processes[name].send_signal(signal.SIGKILL)
            self.processes[name].wait(30)
            self.killed.append(name)
        self.start()

    def stop(self) -> dict[str, int | None]:
        """SIGTERM to those alive; their exit codes (the killed ones' aside)."""
        alive = {n: p for n, p in self.processes.items() if n not in self.killed}
        for process in alive.values():
            process.send_signal(signal.SIGTERM)
        codes: dict[str, int | None] = {}
        for name, process in alive.items():
            try:
                codes[name] = process.wait(60)
            except subprocess.TimeoutExpired:
                process.kill()
                codes[name] = None
        return codes

    def logs(self) -> str:
        return "\n".join(
            f"--- {p.name}\n{p.read_text(errors='replace')[-3000:]}"
            for p in sorted(self.tmp.glob("w*.log"))
        )


@dataclass
class Followed:
    """A job's progress stream, read raw (no client-side de-duplication) through the
    server that did not take the job."""

    job_id: str
    via: RunningServer
    kill_at_epoch: int = 0  # > 0: SIGKILL its worker at the first STEP of this epoch
    events: list[pb.ProgressEvent] = field(default_factory=list)
    killed: str = ""
    kill_event: pb.ProgressEvent | None = None
    error: str = ""

    def follow(self, workers: Workers) -> None:
        holder = ""
        try:
            with grpc.insecure_channel(self.via.target) as channel:
                stub = pb_grpc.AdaptationServiceStub(channel)
                request = pb.StreamProgressRequest(job_id=self.job_id)
                for event in stub.StreamProgress(request, timeout=240):
                    self.events.append(event)
                    if claim := CLAIMED.search(event.message):
                        holder = claim.group(1)
                    if (
                        self.kill_at_epoch
                        and not self.killed
                        and event.kind == pb.EVENT_KIND_STEP
                        and event.epoch >= self.kill_at_epoch
                    ):
                        self.killed, self.kill_event = holder, event
                        workers.kill(holder)  # epoch 1's checkpoint is written: mid-epoch
        except Exception as exc:  # reported by the test, which sees `error`
            self.error = repr(exc)


def _start_servers(
    tmp: Path, store_url: str, artifacts: Path, data_root: Path
) -> list[RunningServer]:
    def one(name: str) -> RunningServer:
        return start_server(
            tmp / name,
            "--no-worker",
            "--store", store_url,
            "--artifacts-dir", str(artifacts),
            "--data-root", str(data_root),
        )  # fmt: skip

    with ThreadPoolExecutor(2) as pool:
        return list(pool.map(one, ["api-a", "api-b"]))


def test_two_servers_and_three_workers_share_one_store_and_one_artifacts_dir(
    postgres_url: str, tmp_path: Path
) -> None:
    started = time.monotonic()
    artifacts, data_root = tmp_path / "shared-artifacts", tmp_path / "datasets"
    small = write_fashion_mnist_folder(data_root / "small", per_class=10, classes=CLASSES)
    large = write_fashion_mnist_folder(data_root / "large", per_class=40, classes=CLASSES)
    workers = Workers(tmp_path, postgres_url, artifacts, data_root)
    for _ in range(3):
        workers.start()
    servers = _start_servers(tmp_path, postgres_url, artifacts, data_root)
    clients = [s.client(timeout=120) for s in servers]
    try:
        # Submitted first, so that a worker runs it (and is freed by the cancel) at once.
        to_cancel = clients[0].start_fine_tune("cancelled", str(large), plan=_forever(LONG))
        upload = clients[0].upload_dataset(small)  # checked by some worker's advisor lane
        assert upload.images == 40, upload
        jobs = _submit(clients, large, small, upload.dataset_id)
        followed = [
            Followed(job.job_id, servers[1 - via], kill_at_epoch=2 if i < 2 else 0)
            for i, (job, via) in enumerate(jobs)
        ]
        threads = [threading.Thread(target=f.follow, args=(workers,)) for f in followed]
        for t in threads:
            t.start()
        cancelled = _cancel_through_the_other_server(clients, to_cancel.job_id)
        for t in threads:
            t.join(300)
        _check_jobs(clients, jobs, followed, workers)
        _check_registrations(postgres_url, jobs, artifacts)
        _predict_through_the_other_server(clients, jobs, small)
        assert cancelled == pb.JOB_STATE_CANCELLED
    finally:
        for client in clients:
            client.close()
        codes = [stop_server(s) for s in servers]
        worker_codes = workers.stop()
    assert codes == [0, 0], [s.log()[-3000:] for s in servers]
    assert all(c == 0 for c in worker_codes.values()), (worker_codes, workers.logs())
    for process_dir in [tmp_path / "api-a" / "graft-data", tmp_path / "api-b" / "graft-data"] + [
        tmp_path / name for name in worker_codes
    ]:  # nothing shared was written beside a process's own files
        assert not {"registry", "uploads", "checkpoints", "cache"} & {
            p.name for p in process_dir.iterdir()
        }, process_dir
    print(f"scale-out test: {time.monotonic() - started:.1f} s")


def _submit(
    clients: list[Client], large: Path, small: Path, dataset_id: str
) -> list[tuple[pb.Job, int]]:
    """Twelve jobs, alternately through each server, on three model names: two long ones
    (their workers get killed) and ten quick ones, half on the upload."""
    jobs = []
    for i in range(12):
        via = i % 2
        name = f"model-{i % 3}"
        if i < 2:
            job = clients[via].start_fine_tune(name, str(large), plan=LONG, request_id=f"r{i}")
        elif i % 4 < 2:
            job = clients[via].start_fine_tune(name, dataset_id=dataset_id, plan=QUICK)
        else:
            job = clients[via].start_fine_tune(name, str(small), plan=QUICK)
        jobs.append((job, via))
    return jobs


def _forever(plan: pb.TrainingPlan) -> pb.TrainingPlan:
    longer = pb.TrainingPlan()
    longer.CopyFrom(plan)
    longer.epochs = 50
    return longer


def _cancel_through_the_other_server(clients: list[Client], job_id: str) -> int:
    """The job submitted to server A, cancelled through server B once a worker trains it;
    its stream through A ends CANCELLED. Returns its final state, as B reports it."""
    seen: list[pb.ProgressEvent] = []
    for event in clients[0].stream_progress(job_id, timeout=240):
        seen.append(event)
        if event.kind == pb.EVENT_KIND_STEP and not any(e.kind == event.kind for e in seen[:-1]):
            assert clients[1].cancel_job(job_id).job_id == job_id
    assert [e.sequence for e in seen] == list(range(1, len(seen) + 1))
    assert seen[-1].state == pb.JOB_STATE_CANCELLED, [e.message for e in seen]
    return clients[1].get_job(job_id).state


def _check_jobs(
    clients: list[Client],
    jobs: list[tuple[pb.Job, int]],
    followed: list[Followed],
    workers: Workers,
) -> None:
    for (job, via), f in zip(jobs, followed, strict=True):
        messages = [e.message for e in f.events]
        assert not f.error, (f.error, messages, workers.logs())
        assert [e.sequence for e in f.events] == list(range(1, len(f.events) + 1)), messages
        ended = [e for e in f.events if e.kind == pb.EVENT_KIND_STATE and e.state >= 3]
        assert [e.state for e in ended] == [pb.JOB_STATE_SUCCEEDED], (messages, workers.logs())
        assert f.events[-1] == ended[0]
        final = clients[via].get_job(job.job_id)
        assert final.state == pb.JOB_STATE_SUCCEEDED and final.model.version >= 1, final
        if f.kill_at_epoch:
            assert f.killed in workers.killed, messages
            claims = [m.group(1, 2) for m in map(CLAIMED.search, messages) if m]
            assert claims[0] == (f.killed, "1") and claims[-1][1] == "2", claims
            assert claims[-1][0] != f.killed  # another worker resumed it
            resumed = [m for m in messages if m.startswith("resumed from checkpoint at epoch")]
            assert resumed and int(resumed[0].split()[5]) >= 1, messages  # not from scratch
            assert final.attempts == 2
            assert f.kill_event is not None
            print(
                f"{f.killed} killed at epoch {f.kill_event.epoch} step {f.kill_event.step}"
                f" of {f.kill_event.steps_per_epoch}; {claims[-1][0]}: {resumed[0]}"
            )
        else:
            assert final.attempts == 1
    assert len(workers.killed) == 2 and len(workers.processes) == 5


def _check_registrations(store_url: str, jobs: list[tuple[pb.Job, int]], artifacts: Path) -> None:
    """One version per job, none twice; versions of a name 1..n; artifacts all shared."""
    with psycopg.connect(store_url) as conn:
        rows = conn.execute(
            "SELECT name, version, job_id, artifact_dir FROM model_versions ORDER BY name, version"
        ).fetchall()
    assert sorted(r[2] for r in rows) == sorted(job.job_id for job, _ in jobs), rows
    for name in ("model-0", "model-1", "model-2"):
        assert [r[1] for r in rows if r[0] == name] == [1, 2, 3, 4], rows
    for _, _, _, directory in rows:
        assert Path(directory).is_relative_to(artifacts.resolve()), directory
        assert (Path(directory) / "model.safetensors").is_file()
    left = list((artifacts / "checkpoints").iterdir())
    assert not left, left  # every job's checkpoints removed once it ended


def _predict_through_the_other_server(
    clients: list[Client], jobs: list[tuple[pb.Job, int]], small: Path
) -> None:
    job = next(j for j, via in jobs[2:] if via == 0)  # submitted through server A
    version = clients[0].get_job(job.job_id).model
    image = next(small.rglob("*.png"))
    answer = clients[1].predict(version.name, [image], version=version.version)
    assert answer.model.version == version.version
    assert answer.predictions[0].classes and not answer.predictions[0].HasField("error")
