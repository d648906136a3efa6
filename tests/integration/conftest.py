"""Fixtures that start the real thing: `graft serve` as a subprocess (with its real worker
process) on a free port, talked to through the real SDK over a real gRPC channel."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from graft_client import Client
from graft_devtools.datasets import write_fashion_mnist_folder

# Four visually distinct Fashion-MNIST classes: trouser, sneaker, bag, ankle boot.
CLASSES = (1, 7, 8, 9)


@dataclass
class RunningServer:
    process: subprocess.Popen[bytes]
    data_dir: Path
    data_root: Path
    port: int
    log_path: Path

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def client(self, timeout: float = 60.0) -> Client:
        return Client(self.target, timeout=timeout)

    def worker_pid(self, lane: str = "trainer") -> int:
        """The pid of an embedded worker: the server's child running graft.worker
        for `lane` (trainer or advisor; its config file is named after the lane)."""
        for task in Path(f"/proc/{self.process.pid}/task").iterdir():
            for pid in (task / "children").read_text().split():
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
                if b"-m graft.worker " in cmdline and f"-{lane}.json".encode() in cmdline:
                    return int(pid)
        raise AssertionError(f"no {lane} worker process found")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def start_server(tmp: Path, *extra: str, lease_seconds: float = 3.0) -> RunningServer:
    data_dir, data_root = tmp / "graft-data", tmp / "datasets"
    data_root.mkdir(parents=True, exist_ok=True)
    log_path = tmp / "server.log"
    env = dict(os.environ, OMP_NUM_THREADS="2", PYTHONUNBUFFERED="1")
    cmd = [
        sys.executable, "-m", "graft", "serve", "--port", "0", "--metrics-port", "0",
        "--worker-metrics-port", "0",
        "--data-dir", str(data_dir), "--data-root", str(data_root),
        "--lease-seconds", str(lease_seconds), *extra,
    ]  # fmt: skip
    ready = data_dir / "server.json"
    ready.unlink(missing_ok=True)  # a previous server's, when a test restarts on this data
    with log_path.open("ab") as log:
        process = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
    deadline = time.monotonic() + 120
    while not ready.exists():
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            raise AssertionError(f"graft serve did not start:\n{log_path.read_text()}")
        time.sleep(0.1)
    port = json.loads(ready.read_text())["port"]
    server = RunningServer(process, data_dir, data_root, port, log_path)
    with grpc.insecure_channel(server.target) as channel:
        status = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(), timeout=30
        )
        assert status.status == health_pb2.HealthCheckResponse.SERVING
    return server


def stop_server(server: RunningServer) -> int:
    if server.process.poll() is None:
        server.process.send_signal(signal.SIGTERM)
        try:
            return server.process.wait(60)
        except subprocess.TimeoutExpired:
            server.process.kill()
            server.process.wait()
            raise
    return server.process.returncode


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    tmp = tmp_path_factory.mktemp("graft")
    running = start_server(tmp)
    try:
        yield running
    finally:
        code = stop_server(running)
        assert code == 0, running.log()[-5000:]


@pytest.fixture(scope="module")
def fashion(server: RunningServer) -> dict[str, Path]:
    """A small real dataset inside the server's data root, plus held-out test images."""
    train = write_fashion_mnist_folder(
        server.data_root / "fashion-train", per_class=40, classes=CLASSES, split="train"
    )
    test = write_fashion_mnist_folder(
        server.data_root / "fashion-test", per_class=15, classes=CLASSES, split="test"
    )
    return {"train": train, "test": test}
