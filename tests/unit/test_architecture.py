"""The layer rules of docs/ARCHITECTURE.md, checked by reading the imports with `ast`.

Every `import` and `from … import` counts, at module level or inside a function (a lazy
import is still a dependency), and so does one under `if TYPE_CHECKING:` for the direct
rules. The transitive rules follow what a process really loads: the imports of a module,
of the packages above it (their `__init__`), and so on, minus the `TYPE_CHECKING` ones.

Known violations are listed in ALLOWED with the reason and the way out; the test fails on
any new violation, and on an allow-list entry that no longer happens (delete it then).
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SOURCES = {"graft": ROOT / "service" / "graft", "graft_client": ROOT / "client" / "graft_client"}

GRPC = ("grpc", "grpc_status", "grpc_health", "grpc_reflection", "google.rpc")
TORCH = ("torch", "torchvision", "timm", "onnxruntime", "safetensors")
# What graft.training may not import: the packages that use it, and the composition roots.
TRAINING_USERS = (
    "graft.advisor",
    "graft.worker",
    "graft.api",
    "graft.predict",
    "graft.registry",
    "graft.store",
    "graft.server",
    "graft.supervisor",
    "graft.cli",
    "graft.reports",
)
# The advisor's modules the API imports.
ADVISOR_ANSWER = ("graft.advisor.advice", "graft.advisor.declared", "graft.advisor.codec")
# The PostgreSQL driver: the store's one third-party dependency, in graft.store.postgres.
POSTGRES_DRIVER = ("psycopg", "psycopg_pool")


@dataclass(frozen=True)
class Imported:
    name: str  # absolute dotted name: `from graft import errors` gives graft and graft.errors
    line: int
    type_checking: bool  # under `if TYPE_CHECKING:`: a type's dependency, not a runtime one


# ------------------------------------------------------------------------- the checker


def imports_of(source: str, module: str, is_package: bool = False) -> list[Imported]:
    """Every import in `source` (the text of `module`), module- and function-level, with
    relative imports made absolute. For `from a import b`, both `a` and `a.b` are listed:
    `b` may be a submodule (the rules match prefixes, so a name that is not one is harmless).
    """
    package = module if is_package else module.rpartition(".")[0]
    found: list[Imported] = []

    def visit(node: ast.AST, type_checking: bool) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.body:
                visit(child, True)
            for child in node.orelse:
                visit(child, type_checking)
            return
        if isinstance(node, ast.Import):
            found.extend(Imported(a.name, node.lineno, type_checking) for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = _absolute(node, package)
            found.append(Imported(base, node.lineno, type_checking))
            found.extend(
                Imported(f"{base}.{a.name}", node.lineno, type_checking)
                for a in node.names
                if a.name != "*"
            )
        for child in ast.iter_child_nodes(node):
            visit(child, type_checking)

    visit(ast.parse(source), False)
    return found


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _absolute(node: ast.ImportFrom, package: str) -> str:
    if not node.level:
        return node.module or ""
    parts = package.split(".")
    base = parts[: len(parts) - (node.level - 1)]
    return ".".join([*base, *([node.module] if node.module else [])])


def within(name: str, prefixes: Iterable[str]) -> bool:
    """True if `name` is one of `prefixes` or inside one (graft.api.x is in graft.api;
    graft_client is not in graft)."""
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def _modules() -> dict[str, tuple[Path, bool]]:
    mods: dict[str, tuple[Path, bool]] = {}
    for top, root in SOURCES.items():
        for path in sorted(root.rglob("*.py")):
            parts = path.relative_to(root).with_suffix("").parts
            is_package = parts[-1] == "__init__"
            name = ".".join([top, *parts[:-1]] if is_package else [top, *parts])
            mods[name] = (path, is_package)
    return mods


MODULES = _modules()
IMPORTS = {
    name: imports_of(path.read_text(encoding="utf-8"), name, is_package)
    for name, (path, is_package) in MODULES.items()
}


def runtime_closure(module: str) -> set[str]:
    """Every name a process that imports `module` loads, as far as this source tree tells:
    the module, the packages above it, and what their runtime imports load in turn.
    Outside names (torch, grpc, …) are listed but not followed."""
    seen: set[str] = set()
    todo = [module]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        parts = name.split(".")
        todo.extend(".".join(parts[:i]) for i in range(1, len(parts)))  # parent packages
        todo.extend(i.name for i in IMPORTS.get(name, ()) if not i.type_checking)
    return seen


# --------------------------------------------------------------------------- the rules


@dataclass(frozen=True)
class Rule:
    name: str
    layer: tuple[str, ...]  # the modules it binds
    forbidden: tuple[str, ...] = ()  # prefixes they may never import
    only: tuple[str, ...] | None = None  # else: the graft modules they may import, alone
    stdlib_only: bool = False  # and no third-party package at all
    third_party: tuple[str, ...] = ()  # ... but these (with stdlib_only)
    exempt: tuple[str, ...] = ()  # modules of `layer` the rule does not bind
    transitive: bool = False  # also what importing them loads


RULES = (
    Rule("api-no-training", ("graft.api",), forbidden=("graft.training",)),
    Rule("api-no-training-loaded", ("graft.api",), forbidden=("graft.training",), transitive=True),
    # The worker process is graft.worker over graft.training: neither knows gRPC.
    Rule(
        "training-no-grpc",
        ("graft.training", "graft.worker"),
        forbidden=(*GRPC, "graft.api", "graft_client"),
    ),
    Rule(
        "training-no-grpc-loaded",
        ("graft.training", "graft.worker"),
        forbidden=(*GRPC, "graft.api", "graft_client"),
        transitive=True,
    ),
    # Training is a library its users call: the advisor (probe, pilot), the worker (jobs).
    Rule("training-below-its-users", ("graft.training",), forbidden=TRAINING_USERS),
    # What the API takes from the advisor (the answer's types, the declared-statistics
    # answer, the codec) and the package itself load no training code.
    Rule(
        "advisor-answer-no-training-loaded",
        ADVISOR_ANSWER,
        forbidden=("graft.training",),
        transitive=True,
    ),
    # The advisor's lanes run in the worker beside training: same rule.
    Rule(
        "advisor-no-grpc",
        ("graft.advisor",),
        forbidden=(*GRPC, "graft.api", "graft_client"),
    ),
    Rule(
        "store-below-everything",
        ("graft.store",),
        only=("graft.store", "graft.domain", "graft.errors", "graft.config"),
        stdlib_only=True,
        third_party=POSTGRES_DRIVER,
    ),
    # ... and only the PostgreSQL store uses it: everything else talks to the protocol.
    Rule(
        "postgres-driver-in-its-store",
        ("graft",),
        forbidden=POSTGRES_DRIVER,
        exempt=("graft.store.postgres",),
    ),
    Rule("sdk-no-server", ("graft_client",), forbidden=("graft",)),
    # The development fixtures (devtools/) and the dev extras' datasets: tests, bench/ and
    # scripts/ use them; the service runs without them (the container image has none).
    Rule("service-no-devtools", ("graft",), forbidden=("graft_devtools", "sklearn", "skimage")),
    Rule("plans-torch-free", ("graft.plans",), forbidden=TORCH),
    Rule("plans-torch-free-loaded", ("graft.plans",), forbidden=TORCH, transitive=True),
    # The exporter runs in a worker's advisor lane: no gRPC, no training. What the API reads
    # of it (the export's folder and record) loads no torch.
    Rule(
        "export-no-grpc-or-training",
        ("graft.export",),
        forbidden=(*GRPC, "graft.api", "graft_client", "graft.training"),
        transitive=True,
    ),
    Rule("export-record-torch-free", ("graft.export.layout",), forbidden=TORCH, transitive=True),
    # Model reports: the worker draws them (graft.reports.build, matplotlib); the API only
    # reads their files (graft.reports.files, standard library), so it loads no plotting.
    Rule("api-draws-no-figures", ("graft.api",), forbidden=("matplotlib",), transitive=True),
    Rule("report-files-stdlib", ("graft.reports.files",), only=("graft.errors",), stdlib_only=True),
    Rule(
        "report-files-light-loaded",
        ("graft.reports.files",),
        forbidden=(*TORCH, "matplotlib", "graft.training"),
        transitive=True,
    ),
    Rule("reports-no-grpc", ("graft.reports",), forbidden=(*GRPC, "graft.api", "graft_client")),
)

# (rule, module, imported name) -> why it is allowed for now and how it goes away.
ALLOWED: dict[tuple[str, str, str], str] = {
    # `python -m graft.backbones.sanity` without image arguments classifies scikit-image's
    # sample photos (lazily imported; with IMAGE arguments it needs none). Way out: ship two
    # photos as package data, or move the check out of the package (bench/ or scripts/).
    ("service-no-devtools", "graft.backbones.sanity", "skimage.data"): "sanity's sample photos",
}


def _stdlib(name: str) -> bool:
    return name.split(".")[0] in sys.stdlib_module_names or name == "__future__"


def violations(rule: Rule) -> Iterator[tuple[str, str, str]]:
    """(module, imported name, where) for each import of a module of `rule.layer` that
    breaks it."""
    for module in MODULES:
        if not within(module, rule.layer) or within(module, rule.exempt):
            continue
        if rule.transitive:
            # One entry per forbidden package loaded, with the chain that loads it.
            hits = {_matched(rule, n) for n in runtime_closure(module) if _breaks(rule, n)}
            for hit in sorted(hits):
                yield module, hit, "via " + " -> ".join(_chain(module, hit))
        else:
            for i in IMPORTS[module]:
                if _breaks(rule, i.name):
                    yield module, i.name, f"line {i.line}"


def _matched(rule: Rule, name: str) -> str:
    """The forbidden prefix `name` falls in (else its top-level package)."""
    return next((p for p in rule.forbidden if within(name, (p,))), name.split(".")[0])


def _chain(module: str, target: str) -> list[str]:
    """The shortest import chain from `module` to a name in `target` (for the message)."""
    parents: dict[str, str] = {module: ""}
    todo = [module]
    while todo:
        name = todo.pop(0)
        if within(name, (target,)):
            chain = [name]
            while parents[chain[-1]]:
                chain.append(parents[chain[-1]])
            return chain[::-1]
        parts = name.split(".")
        nexts = [".".join(parts[:i]) for i in range(1, len(parts))]
        nexts += [i.name for i in IMPORTS.get(name, ()) if not i.type_checking]
        for n in nexts:
            if n not in parents:
                parents[n] = name
                todo.append(n)
    return [module, "?", target]


def _breaks(rule: Rule, name: str) -> bool:
    if within(name, rule.forbidden):
        return True
    if rule.only is not None and within(name, ("graft",)) and not within(name, rule.only):
        return True
    return (
        rule.stdlib_only
        and not within(name, ("graft",))
        and not _stdlib(name)
        and not within(name, rule.third_party)
    )


# --------------------------------------------------------------------------- the tests


def test_the_tree_is_read() -> None:
    # A checker that reads nothing passes everything.
    assert {"graft.api.servicer", "graft.training.loop", "graft.store", "graft_client"} <= set(
        MODULES
    )
    assert any(i.name == "grpc" for i in IMPORTS["graft.api.jobs"])


@pytest.mark.parametrize("rule", RULES, ids=lambda r: r.name)
def test_layer_rule(rule: Rule) -> None:
    found = {(rule.name, m, n): where for m, n, where in violations(rule)}
    new = [
        f"{m} imports {n} ({where})"
        for (r, m, n), where in sorted(found.items())
        if (r, m, n) not in ALLOWED
    ]
    assert not new, f"rule {rule.name} (docs/ARCHITECTURE.md) broken:\n" + "\n".join(new)
    stale = [k for k in ALLOWED if k[0] == rule.name and k not in found]
    assert not stale, f"allow-list entries that no longer happen, delete them: {stale}"


# ------------------------------------------------------------- the checker, checked


SYNTHETIC = '''
"""A training module that breaks the rules every way the checker must see."""
from __future__ import annotations
import os
from typing import TYPE_CHECKING
import grpc.aio
from ..api import convert
from . import loop

if TYPE_CHECKING:
    from graft_client.v1 import adaptation_pb2

def later():
    import graft.api.servicer
    from graft import api
'''


def test_checker_sees_every_kind_of_import() -> None:
    found = imports_of(SYNTHETIC, "graft.training.bad")
    names = {i.name for i in found}
    assert {"os", "grpc.aio", "graft.api", "graft.api.convert", "graft.training.loop"} <= names
    assert {"graft.api.servicer", "graft_client.v1.adaptation_pb2"} <= names
    by_name = {i.name: i for i in found}
    assert by_name["graft_client.v1.adaptation_pb2"].type_checking
    assert not by_name["graft.api.servicer"].type_checking
    assert by_name["graft.api.servicer"].line == 14  # the function-level one


def test_checker_fails_on_a_forbidden_import() -> None:
    rule = next(r for r in RULES if r.name == "training-no-grpc")
    clean = imports_of("import os\nfrom graft.domain import Job\n", "graft.training.ok")
    assert not [i for i in clean if _breaks(rule, i.name)]
    for bad in (
        "import grpc\n",
        "from graft.api import convert\n",
        "def f():\n    from graft_client.v1 import adaptation_pb2\n",
        "from ..api.convert import advice_to_pb\n",
    ):
        found = imports_of(bad, "graft.training.bad")
        assert [i for i in found if _breaks(rule, i.name)], bad


def test_checker_store_and_sdk_rules() -> None:
    store = next(r for r in RULES if r.name == "store-below-everything")
    assert not _breaks(store, "graft.domain")
    assert not _breaks(store, "sqlite3")
    assert _breaks(store, "graft.registry")
    assert _breaks(store, "torch")
    assert not _breaks(store, "psycopg.rows") and not _breaks(store, "psycopg_pool")
    assert _breaks(store, "psycopg2")  # a prefix of names, not of strings
    driver = next(r for r in RULES if r.name == "postgres-driver-in-its-store")
    assert _breaks(driver, "psycopg.conninfo")
    lazy = "def f():\n    import psycopg\n"
    assert [i for i in imports_of(lazy, "graft.store.sqlite.base") if _breaks(driver, i.name)]
    # The PostgreSQL store is exempt, and is read: its imports are the ones allowed.
    assert any(within(i.name, POSTGRES_DRIVER) for i in IMPORTS["graft.store.postgres.base"])
    assert not [v for v in violations(driver) if within(v[0], driver.exempt)]
    sdk = next(r for r in RULES if r.name == "sdk-no-server")
    assert _breaks(sdk, "graft.api")
    assert not _breaks(sdk, "graft_client.v1")  # a prefix match, not a string one


def test_checker_devtools_rule() -> None:
    rule = next(r for r in RULES if r.name == "service-no-devtools")
    lazy = "def f():\n    from graft_devtools.datasets import write_fashion_mnist_folder\n"
    assert [i for i in imports_of(lazy, "graft.data.x") if _breaks(rule, i.name)]
    assert _breaks(rule, "sklearn.datasets") and _breaks(rule, "skimage")
    assert not _breaks(rule, "graft_client.v1") and not _breaks(rule, "numpy")
    assert not within("graft_devtools", rule.layer)  # graft_devtools is not a graft module


def test_checker_training_and_advisor_answer_rules() -> None:
    rule = next(r for r in RULES if r.name == "training-below-its-users")
    for bad in ("graft.advisor.probe", "graft.worker", "graft.registry.card", "graft.predict"):
        assert _breaks(rule, bad), bad
    for fine in ("graft.backbones.spec", "graft.data", "graft.plans", "graft.domain"):
        assert not _breaks(rule, fine), fine
    grpc_rule = next(r for r in RULES if r.name == "training-no-grpc")
    assert within("graft.worker.lease", grpc_rule.layer)  # the worker process is bound too
    # The answer's closure holds the advisor package itself (its __init__) and not the
    # measuring modules; advice_cache is not advice.
    answer = next(r for r in RULES if r.name == "advisor-answer-no-training-loaded")
    assert "graft.advisor" in runtime_closure("graft.advisor.advice")
    assert "graft.advisor.probe" not in runtime_closure("graft.advisor.codec")
    assert not within("graft.advisor.advice_cache", answer.layer)


def test_runtime_closure_follows_parents_and_skips_type_checking() -> None:
    closure = runtime_closure("graft.plans")
    assert "graft.domain" in closure  # through graft.plans.matrix
    # graft.backbones names factory (torch) under TYPE_CHECKING only, then loads it lazily.
    assert "graft.backbones.pretrained" in closure
    assert "graft.backbones.factory" not in closure
    assert "graft.training.loop" in runtime_closure("graft.advisor.probe")
