"""The Compose command lines run for real: `graft serve` and `graft worker` started with them
(data dir and ports moved to free ones) come up healthy, with /metrics listening on every
interface, as a container needs for Prometheus and Kubernetes probes to reach it."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.deploy.common import DEPLOY, load_yaml

GRAFT = Path(sys.executable).parent / "graft"
HEALTHCHECK = DEPLOY / "docker" / "healthcheck.py"
pytestmark = pytest.mark.slow  # starts real server and worker processes


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def compose_command(service: str, **replace: str) -> list[str]:
    """The service's command from compose.yaml with some `--flag=value` values replaced."""
    command = load_yaml(DEPLOY / "compose" / "compose.yaml")["services"][service]["command"]
    out = []
    for arg in command:
        flag, eq, _ = arg.partition("=")
        key = flag.removeprefix("--").replace("-", "_")
        out.append(f"{flag}={replace.pop(key)}" if eq and key in replace else arg)
    assert not replace, f"{service}'s command has no {sorted(replace)}"
    return out


WILDCARD = {"00000000", "00000000000000000000000000000000"}  # 0.0.0.0 and ::, as /proc shows


def listens_on_every_interface(port: int) -> bool:
    addresses = listen_addresses(port)
    assert addresses, f"nothing listens on port {port}"
    return addresses <= WILDCARD


def listen_addresses(port: int) -> set[str]:
    """Local addresses of sockets listening on `port` (Linux /proc/net), as hex."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        if not os.path.exists(table):
            continue
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            address, _, hex_port = fields[1].partition(":")
            if fields[3] == "0A" and int(hex_port, 16) == port:  # 0A = LISTEN
                found.add(address)
    return found


def wait_until(check: Callable[[], bool], proc: subprocess.Popen[str], seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"exited with {proc.returncode}"
        if check():
            return
        time.sleep(0.2)
    raise AssertionError(f"not ready within {seconds} s")


def metrics_answer(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as reply:
            return int(reply.status) == 200
    except OSError:
        return False


@pytest.fixture
def start() -> Iterator[Callable[[list[str]], subprocess.Popen[str]]]:
    procs: list[subprocess.Popen[str]] = []

    def run(argv: list[str]) -> subprocess.Popen[str]:
        proc = subprocess.Popen([str(GRAFT), *argv], stderr=subprocess.PIPE, text=True)
        procs.append(proc)
        return proc

    yield run
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_compose_server_command_serves_health_and_metrics(
    tmp_path: Path, start: Callable[[list[str]], subprocess.Popen[str]]
) -> None:
    port, metrics = free_port(), free_port()
    argv = compose_command(
        "graft-server", data_dir=str(tmp_path), port=str(port), metrics_port=str(metrics)
    )
    proc = start(argv)

    def healthy() -> bool:
        check = [sys.executable, str(HEALTHCHECK), f"127.0.0.1:{port}", "--timeout", "2"]
        return subprocess.run(check, capture_output=True, timeout=30).returncode == 0

    wait_until(healthy, proc, 60)
    assert metrics_answer(metrics)
    assert listens_on_every_interface(port) and listens_on_every_interface(metrics)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 0  # drains and exits 0


def test_compose_worker_command_serves_metrics_on_every_interface(
    tmp_path: Path, start: Callable[[list[str]], subprocess.Popen[str]]
) -> None:
    metrics = free_port()
    argv = compose_command("graft-worker", data_dir=str(tmp_path), metrics_port=str(metrics))
    proc = start([*argv, "--device=cpu"])
    wait_until(lambda: metrics_answer(metrics), proc, 60)
    assert listens_on_every_interface(metrics)
