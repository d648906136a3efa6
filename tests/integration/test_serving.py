"""Serving like a backend, on the real `graft serve` process: open streams cost the API
nothing, Advise runs in the advisor worker process while Predict keeps answering, and a
caller that gives up stops the worker's work.

Latency bounds here are deliberately generous (this machine is noisy and CI shares it);
the measured figures are printed, and docs/OPERATIONS.md records them with the command."""

from __future__ import annotations

import asyncio
import io
import sqlite3
import statistics
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from PIL import Image

import graft_client
from graft.config import Config
from graft.domain import DatasetRef, JobState, TrainingPlan
from graft.store import open_store
from graft_client import Client, pb
from graft_client.v1 import adaptation_pb2_grpc as pb_grpc
from tests.helpers import register_random_model
from tests.integration.conftest import RunningServer, start_server, stop_server

pytestmark = pytest.mark.slow

STREAMS = 1000


def _png() -> bytes:
    out = io.BytesIO()
    Image.new("L", (28, 28), 128).save(out, format="PNG")
    return out.getvalue()


def _latencies(call: Callable[[], object], n: int = 20) -> list[float]:
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        call()
        out.append(time.perf_counter() - t0)
    return out


def _summary(xs: list[float]) -> str:
    xs = sorted(xs)
    return f"p50 {1000 * statistics.median(xs):.1f} ms, max {1000 * xs[-1]:.1f} ms"


@pytest.fixture(scope="module")
def idle_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    """A server with no worker, so jobs stay queued, and one servable model."""
    tmp = tmp_path_factory.mktemp("streams")
    register_random_model(tmp / "graft-data", "served")
    running = start_server(tmp, "--no-worker")
    try:
        yield running
    finally:
        assert stop_server(running) == 0, running.log()[-5000:]


def test_a_thousand_open_streams_do_not_slow_the_other_rpcs(idle_server: RunningServer) -> None:
    store = open_store(Config(data_dir=idle_server.data_dir))
    job_ids = [
        store.create_job(
            model_name=f"m{i}", dataset=DatasetRef(uri="/x"), plan=TrainingPlan(), request_id=""
        )[0].job_id
        for i in range(STREAMS)
    ]
    png = _png()
    with (
        Client(idle_server.target, timeout=30) as client,
        grpc.insecure_channel(idle_server.target) as channel,
    ):
        health = health_pb2_grpc.HealthStub(channel)
        calls: dict[str, Callable[[], object]] = {
            "health": lambda: health.Check(health_pb2.HealthCheckRequest(), timeout=10),
            "GetJob": lambda: client.get_job(job_ids[0], timeout=10),
            "Predict": lambda: client.predict("served", [png], timeout=10),
        }
        calls["Predict"]()  # load the model once
        before = {name: _latencies(call) for name, call in calls.items()}

        opened = threading.Event()
        release = threading.Event()
        first_events: list[int] = []

        async def hold_streams() -> None:
            channels = [grpc.aio.insecure_channel(idle_server.target) for _ in range(10)]
            stubs = [pb_grpc.AdaptationServiceStub(c) for c in channels]
            streams = [
                stubs[i % 10].StreamProgress(pb.StreamProgressRequest(job_id=job_id))
                for i, job_id in enumerate(job_ids)
            ]
            firsts = await asyncio.gather(*(s.read() for s in streams))
            first_events.extend(e.sequence for e in firsts)
            opened.set()
            while not release.is_set():
                await asyncio.sleep(0.05)
            for s in streams:
                s.cancel()
            for c in channels:
                await c.close()

        holder = threading.Thread(target=lambda: asyncio.run(hold_streams()), daemon=True)
        holder.start()
        assert opened.wait(120), "the streams did not open"
        try:
            assert first_events == [1] * STREAMS  # every stream is live on its queued job
            during = {name: _latencies(call) for name, call in calls.items()}
            # A job's event reaches its follower while the 1000 others stay open.
            client.cancel_job(job_ids[-1])
            events = list(client.stream_progress(job_ids[-1]))
            assert events[-1].state == pb.JOB_STATE_CANCELLED
        finally:
            release.set()
            holder.join(30)
    store.close()
    for name in calls:
        print(f"{name}: alone {_summary(before[name])}; with {STREAMS} streams open "
              f"{_summary(during[name])}")  # fmt: skip
        # Generous: a thread-per-stream server cannot answer at all here.
        assert statistics.median(during[name]) < max(0.25, 10 * statistics.median(before[name]))
        assert max(during[name]) < 2.0


@pytest.fixture(scope="module")
def served(server: RunningServer, fashion: dict[str, Path]) -> str:
    """A model to Predict with, trained for one epoch on frozen features."""
    client = server.client()
    plan = pb.TrainingPlan(strategy=pb.STRATEGY_FEATURE_EXTRACTION, epochs=1, image_size=32)
    job = client.wait(client.start_fine_tune("served", str(fashion["train"]), plan=plan).job_id)
    assert job.state == pb.JOB_STATE_SUCCEEDED, job.error
    return "served"


def _tasks(server: RunningServer) -> list[tuple[str, int, int]]:
    """(task_id, state, worker_pid) of every Advise task, read from the store file."""
    with sqlite3.connect(server.data_dir / "graft.sqlite3") as conn:
        return conn.execute("SELECT task_id, state, worker_pid FROM tasks ORDER BY seq").fetchall()


def test_advise_runs_in_the_advisor_process_while_predict_answers(
    server: RunningServer, fashion: dict[str, Path], served: str
) -> None:
    png = _png()
    stop = threading.Event()
    predicted: list[float] = []
    failures: list[BaseException] = []

    def predict_loop() -> None:
        with Client(server.target, timeout=30) as client:
            while not stop.is_set():
                t0 = time.perf_counter()
                try:
                    client.predict(served, [png])
                except BaseException as exc:
                    failures.append(exc)
                predicted.append(time.perf_counter() - t0)

    advice: list[pb.AdviseResponse] = []

    def advise() -> None:
        with Client(server.target, timeout=600) as client:
            advice.append(
                client.advise(
                    str(fashion["train"]),
                    max_images=40,
                    candidate_backbones=["efficientnet_lite0"],
                )
            )

    before = len(_tasks(server))
    looper = threading.Thread(target=predict_loop, daemon=True)
    looper.start()
    advisers = [threading.Thread(target=advise, daemon=True) for _ in range(8)]
    t0 = time.perf_counter()
    for t in advisers:
        t.start()
    for t in advisers:
        t.join(600)
    seconds = time.perf_counter() - t0
    stop.set()
    looper.join(30)
    assert len(advice) == 8 and all(a.plan.backbone == "efficientnet_lite0" for a in advice)
    assert not failures, failures[:3]
    assert len(predicted) > 8
    print(f"8 Advise in {seconds:.0f} s; {len(predicted)} Predict calls, {_summary(predicted)}")
    advisor = server.worker_pid("advisor")
    tasks = _tasks(server)[before:]
    assert len(tasks) == 8
    assert {pid for _, _, pid in tasks} == {advisor} != {server.process.pid}
    assert all(state == JobState.SUCCEEDED for _, state, _ in tasks)


def test_a_caller_that_gives_up_stops_the_advisors_work(
    server: RunningServer, fashion: dict[str, Path]
) -> None:
    client = server.client()
    for give_up in ("deadline", "cancel"):
        before = len(_tasks(server))
        if give_up == "deadline":
            with pytest.raises(graft_client.DeadlineExceeded):
                client.advise(str(fashion["train"]), timeout=4)
        else:
            with grpc.insecure_channel(server.target) as channel:
                stub = pb_grpc.AdaptationServiceStub(channel)
                call = stub.Advise.future(
                    pb.AdviseRequest(dataset=pb.DatasetRef(uri=str(fashion["train"]))),
                    timeout=600,
                )
                while not [t for t in _tasks(server)[before:] if t[1] == JobState.RUNNING]:
                    time.sleep(0.1)
                time.sleep(1.0)  # well into the measurements
                call.cancel()
        gave_up = time.monotonic()
        while time.monotonic() - gave_up < 10:
            (task,) = _tasks(server)[before:]
            if task[1] == JobState.CANCELLED:
                break
            time.sleep(0.1)
        stopped = time.monotonic() - gave_up
        assert task[1] == JobState.CANCELLED, f"{give_up}: task still {JobState(task[1]).name}"
        print(f"{give_up}: the advisor stopped {stopped:.1f} s after the caller gave up")
        assert "cancelled in" in server.log() or "advise) cancelled" in server.log()
