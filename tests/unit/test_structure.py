"""Small rooms (docs/ARCHITECTURE.md): no module of the service, the SDK or the devtools
over MAX_MODULE_LINES lines, no function over MAX_FUNCTION_LINES (generated code aside).
A room that outgrows them is split by responsibility, not the limit raised."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = [
    ROOT / "service" / "graft",
    ROOT / "client" / "graft_client",
    ROOT / "devtools" / "graft_devtools",
]
GENERATED = ROOT / "client" / "graft_client" / "v1"
MAX_MODULE_LINES = 420  # "about 400"
MAX_FUNCTION_LINES = 80


def _modules() -> list[Path]:
    found = [p for package in PACKAGES for p in package.rglob("*.py")]
    return sorted(p for p in found if GENERATED not in p.parents)


def test_every_module_is_small() -> None:
    sizes = {p.relative_to(ROOT): len(p.read_text().splitlines()) for p in _modules()}
    assert len(sizes) > 100  # the walk found the code
    big = {str(p): n for p, n in sizes.items() if n > MAX_MODULE_LINES}
    assert not big, f"modules over {MAX_MODULE_LINES} lines: {big}"


def test_every_function_is_short() -> None:
    long: dict[str, int] = {}
    for path in _modules():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                assert node.end_lineno is not None
                length = node.end_lineno - node.lineno + 1
                if length > MAX_FUNCTION_LINES:
                    long[f"{path.relative_to(ROOT)}:{node.lineno} {node.name}"] = length
    assert not long, f"functions over {MAX_FUNCTION_LINES} lines: {long}"
