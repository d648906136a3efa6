"""The SDK is its own distribution with grpcio + protobuf (+ the protobuf-only google.rpc
messages) and nothing heavier: installing it must never pull torch."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _names(requirements: list[str]) -> set[str]:
    return {re.split(r"[<>=!~;\[ ]", r, maxsplit=1)[0].lower() for r in requirements}


def test_client_distribution_depends_on_grpc_and_protobuf_only() -> None:
    project = tomllib.loads((ROOT / "client" / "pyproject.toml").read_text())["project"]
    assert project["name"] == "graft-client"
    assert _names(project["dependencies"]) == {"grpcio", "protobuf", "googleapis-common-protos"}


def test_server_distribution_uses_the_client_for_its_generated_code() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    deps = _names(project["dependencies"])
    assert "graft-client" in deps and "torch" in deps
    assert project["scripts"]["graft"] == "graft.cli:main"
