"""The cluster layout runs for real: the processes of deploy/kubernetes/scaled, with their
args and their environment (the ConfigMap, and the Secret graft-store pointing at a real
PostgreSQL the tests start), each with a data directory of its own and one artifacts
folder in common, as the pods have. Two API replicas come up SERVING on the one store, and
each counts the trainer and the advisor that heartbeat into it."""

from __future__ import annotations

import functools
import os
import re
import signal
import subprocess
import sys
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.deploy.test_kubernetes_scaled import args_of, find, pod_env
from tests.deploy.test_processes import GRAFT, HEALTHCHECK, free_port, wait_until

pytestmark = [pytest.mark.slow, pytest.mark.postgres]  # real processes, a real PostgreSQL

Start = Callable[[str, Path, dict[str, str]], subprocess.Popen[str]]


def pod_command(deployment: str, data_dir: Path, replace: dict[str, str]) -> list[str]:
    """The Deployment's args, with the data directory and the `replace`d flags (ports,
    device) moved and no TLS files (the Secret graft-tls is not here; the probes' health
    port is plaintext anyway)."""
    out = []
    for arg in args_of(find("Deployment", deployment)):
        flag, _, _ = arg.partition("=")
        key = flag.removeprefix("--").replace("-", "_")
        if key in ("tls_cert", "tls_key"):
            continue
        if key == "data_dir":
            arg = f"{flag}={data_dir}"
        elif key in replace:
            arg = f"{flag}={replace[key]}"
        out.append(arg)
    return out


@pytest.fixture
def start(postgres_url: str, tmp_path: Path) -> Iterator[Start]:
    """Start a pod's process: its args, its environment with the store URL of a fresh test
    database, the shared artifacts folder under tmp_path."""
    procs: list[subprocess.Popen[str]] = []
    shared = tmp_path / "shared"

    def run(deployment: str, data_dir: Path, replace: dict[str, str]) -> subprocess.Popen[str]:
        env = pod_env(find("Deployment", deployment), {"GRAFT_STORE_URL": postgres_url})
        env |= {"GRAFT_DATA_DIR": str(data_dir), "GRAFT_ARTIFACTS_DIR": str(shared)}
        argv = pod_command(deployment, data_dir, replace)
        proc = subprocess.Popen(
            [str(GRAFT), *argv], env={**os.environ, **env}, stderr=subprocess.DEVNULL, text=True
        )
        procs.append(proc)
        return proc

    yield run
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    for proc in procs:
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def healthy(port: int) -> bool:
    check = [sys.executable, str(HEALTHCHECK), f"127.0.0.1:{port}", "--timeout", "2"]
    return subprocess.run(check, capture_output=True, timeout=30).returncode == 0


def gauge(port: int, name: str) -> float | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as reply:
            text = reply.read().decode()
    except OSError:
        return None
    found = re.search(rf"^{name} (\S+)$", text, re.MULTILINE)
    return float(found.group(1)) if found else None


def counts_workers(port: int, n: int) -> bool:
    return gauge(port, "graft_workers_ready") == n


def test_two_api_replicas_and_both_worker_lanes_share_one_postgres_store(
    tmp_path: Path, start: Start
) -> None:
    servers = []
    for i in range(2):
        ports = {"port": free_port(), "health_port": free_port(), "metrics_port": free_port()}
        proc = start(
            "graft-server", tmp_path / f"server-{i}", {k: str(v) for k, v in ports.items()}
        )
        servers.append((proc, ports))
    for name in ("graft-trainer", "graft-advisor"):
        # No GPU here: the trainer's --device=cuda becomes cpu.
        start(name, tmp_path / name, {"metrics_port": str(free_port()), "device": "cpu"})
    for proc, ports in servers:
        wait_until(functools.partial(healthy, ports["health_port"]), proc, 90)
    for proc, ports in servers:
        wait_until(functools.partial(counts_workers, ports["metrics_port"], 2), proc, 90)
        assert gauge(ports["metrics_port"], "graft_store_up") == 1
    # Each replica wrote its ready file into its own data directory, not a shared one.
    for i in range(2):
        assert (tmp_path / f"server-{i}" / "server.json").is_file()
