"""Admission control and awaited work, through a real in-process grpc.aio server and the SDK:
a method past its limit is refused at once with a retry hint; a waiting call that its
client abandons gives its place (and its task) up; the limits parse as documented."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from PIL import Image

import graft_client
from graft.api.admission import DEFAULT_LIMITS, Limit, _Gate, parse_limits
from graft.config import Config
from graft.domain import JobState, TaskKind
from graft.errors import ResourceExhausted
from graft.server import BackgroundServer
from graft_client import Client, pb
from graft_client.v1 import adaptation_pb2_grpc as pb_grpc


def _dataset(root: Path) -> Path:
    for label in ("a", "b"):
        (root / "two" / label).mkdir(parents=True)
        for i in range(3):
            pixels = np.full((8, 8, 3), 40 * i + (100 if label == "b" else 0), np.uint8)
            Image.fromarray(pixels).save(root / "two" / label / f"{i}.png")
    return root / "two"


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[BackgroundServer, Path]]:
    """A server with no worker: an Advise waits for a task nobody runs."""
    data = _dataset(tmp_path / "datasets")
    config = Config(
        data_dir=tmp_path / "data",
        data_roots=(tmp_path / "datasets",),
        embedded_worker=False,
        rpc_limits=("Advise=1:1",),
    )
    with BackgroundServer(config) as running:
        yield running, data


def _task_states(server: BackgroundServer) -> list[JobState]:
    store = server.services.store
    counts = {s: store.count_tasks(TaskKind.ADVISE, [s]) for s in JobState}
    return [s for s, n in counts.items() for _ in range(n)]


def test_past_the_limit_is_refused_at_once_with_a_retry_hint(
    server: tuple[BackgroundServer, Path],
) -> None:
    running, data = server
    with grpc.insecure_channel(running.target) as channel:
        stub = pb_grpc.AdaptationServiceStub(channel)
        request = pb.AdviseRequest(dataset=pb.DatasetRef(uri=str(data)))
        first = stub.Advise.future(request, timeout=30)  # runs: waits for its task
        second = stub.Advise.future(request, timeout=30)  # waits for a slot
        deadline = time.monotonic() + 10
        while len(_task_states(running)) < 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        t0 = time.monotonic()
        with pytest.raises(grpc.RpcError) as refused:
            stub.Advise(request, timeout=30)  # the queue (1) is full: refused, not queued
        assert time.monotonic() - t0 < 2
        assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "Advise: 1 running and 1 waiting" in refused.value.details()
        status = rpc_status.from_call(refused.value)
        assert status is not None
        retry = error_details_pb2.RetryInfo()
        assert any(d.Unpack(retry) for d in status.details)
        assert retry.retry_delay.ToMilliseconds() > 0
        # Health and other methods are not limited by Advise's limit.
        assert stub.ListBackbones(pb.ListBackbonesRequest(), timeout=5).backbones
        first.cancel()
        second.cancel()
    # Both abandoned calls gave their task up: nothing is left queued or running.
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        states = _task_states(running)
        if states and all(s == JobState.CANCELLED for s in states):
            break
        time.sleep(0.05)
    assert states and all(s == JobState.CANCELLED for s in states), states
    assert running.built.services.watcher._tasks == {}  # no subscription left behind


def test_a_caller_deadline_travels_with_the_task(server: tuple[BackgroundServer, Path]) -> None:
    running, data = server
    with Client(running.target) as client:
        t0 = time.time()
        with pytest.raises(graft_client.GraftError) as failed:
            client.advise(str(data), timeout=1.0)
        assert isinstance(failed.value, graft_client.DeadlineExceeded)
    store = running.services.store
    with store._tx(write=False) as c:  # the only task: its deadline is the caller's
        (deadline,) = c.execute("SELECT deadline FROM tasks").fetchone()
    assert t0 < deadline < t0 + 2


def test_parse_limits() -> None:
    limits = parse_limits(["Advise=2:3", "Predict=8", "*=100:0"])
    assert limits["Advise"] == Limit(2, 3) and limits["Predict"] == Limit(8, 0)
    assert (
        limits["*"] == Limit(100, 0)
        and limits["StreamProgress"] == DEFAULT_LIMITS["StreamProgress"]
    )
    for bad in ("Advise", "Advise=0", "Advise=x", "=3", "Advise=1:-1"):
        with pytest.raises(ValueError, match="bad limit"):
            parse_limits([bad])


def test_gate_hands_slots_over_in_order_and_survives_cancellation() -> None:
    async def scenario() -> list[str]:
        gate = _Gate(Limit(1, 2))
        order: list[str] = []
        await gate.acquire("M")

        async def waiter(name: str) -> None:
            await gate.acquire("M")
            order.append(name)
            await asyncio.sleep(0)
            gate.release(0.01)

        a = asyncio.create_task(waiter("a"))
        b = asyncio.create_task(waiter("b"))
        await asyncio.sleep(0)
        with pytest.raises(ResourceExhausted):
            await gate.acquire("M")  # one running, two waiting: full
        a.cancel()  # a gives its place up while waiting
        await asyncio.sleep(0)
        gate.release(0.01)
        await b
        assert gate.running == 0 and not gate.waiters
        return order

    assert asyncio.run(scenario()) == ["b"]


def test_pending_advice_is_capped(tmp_path: Path) -> None:
    """Past `max_pending_advice` queued or running Advise tasks, a new Advise is refused
    at once rather than queued behind work the advisor may never reach in time."""
    data = _dataset(tmp_path / "datasets")
    config = Config(
        data_dir=tmp_path / "data",
        data_roots=(tmp_path / "datasets",),
        embedded_worker=False,
        max_pending_advice=1,
    )
    with BackgroundServer(config) as running, grpc.insecure_channel(running.target) as channel:
        stub = pb_grpc.AdaptationServiceStub(channel)
        request = pb.AdviseRequest(dataset=pb.DatasetRef(uri=str(data)))
        waiting = stub.Advise.future(request, timeout=30)  # its task waits: no worker
        deadline = time.monotonic() + 10
        while not _task_states(running) and time.monotonic() < deadline:
            time.sleep(0.05)
        with pytest.raises(grpc.RpcError) as refused:
            stub.Advise(request, timeout=30)
        assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "already queued or running" in refused.value.details()
        waiting.cancel()
