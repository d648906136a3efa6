"""The SDK is its own distribution with grpcio + protobuf (+ the protobuf-only google.rpc
messages) and nothing heavier: installing it must never pull torch. The development
fixtures (devtools/) are one too, and the server never depends on them."""

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


def test_devtools_is_its_own_distribution_and_no_dependency_of_the_server() -> None:
    # graft_devtools (the fixtures of tests, bench/ and scripts/) stays out of the service:
    # neither its dependencies nor an extra name it, and it needs nothing of Graft.
    devtools = tomllib.loads((ROOT / "devtools" / "pyproject.toml").read_text())["project"]
    assert devtools["name"] == "graft-devtools"
    assert not _names(devtools["dependencies"]) & {"graft", "graft-client", "torch"}
    server = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    named = _names(server["dependencies"])
    for extra in server["optional-dependencies"].values():
        named |= _names(extra)
    assert "graft-devtools" not in named
    assert "-e devtools" in (ROOT / "Makefile").read_text()  # `make setup` installs it
