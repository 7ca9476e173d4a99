"""The import rules of docs/architecture.md ("Packages and what may import what"), checked on the
source: a change that breaks one fails here by name instead of growing a tangle.

The rules are read from the module's ``import`` statements (top level and inside functions), so a
lazy import counts the same as any other.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
TOP = ("api", "worker", "shared", "bench")
# What each top-level package may import of the others (tests import anything).
MAY_IMPORT = {
    "api": {"shared"},
    "worker": {"shared"},
    "shared": set(),
    "bench": {"shared"},
}
# shared's core: anything in shared may use it; it uses no domain, except the domains' wire
# models (schemas), which cross the broker and import no domain logic themselves.
CORE = {"settings", "ids", "logs", "codes", "cache", "metrics", "observe", "batching", "probe",
        "collector", "db", "messaging"}
# The domains in layers: a domain imports its own layer's and lower layers' domains, never a
# higher one's but its wire models (as the core may). Layer 1 is what the service knows (records,
# the request rules, notification delivery), layer 2 what it does with an event, layer 3 the
# front doors' rules.
LAYERS = {"records": 1, "requests": 1, "notify": 1, "transactions": 2, "retention": 2,
          "intake": 3, "mail": 3}
# The command line starts every role, so it may use any of shared.
ENTRY = {"cli"}


def modules() -> dict[str, Path]:
    found = {}
    for package in TOP:
        for path in (ROOT / package).rglob("*.py"):
            parts = path.relative_to(ROOT).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            found[name] = path
    return found


MODULES = modules()


def imports(path: Path) -> Iterator[str]:
    """Every module of ours ``path`` imports, by its full name."""
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # ``from shared import metrics`` imports the module shared.metrics.
            names = [f"{node.module}.{alias.name}" for alias in node.names] + [node.module]
        for imported in names:
            module = imported
            while module and module not in MODULES:
                module = module.rpartition(".")[0]
            if module:
                yield module
                break


def edges() -> Iterator[tuple[str, str]]:
    for name, path in sorted(MODULES.items()):
        for target in imports(path):
            if target != name:
                yield name, target


EDGES = sorted(set(edges()))


def shared_unit(module: str) -> str:
    """``shared.intake.webex.service`` -> ``intake``; ``shared.codes`` -> ``codes``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def test_the_rules_name_every_package_of_shared() -> None:
    units = {shared_unit(name) for name in MODULES if name.startswith("shared.")}
    assert units == CORE | set(LAYERS) | ENTRY


def test_top_level_packages_import_only_what_they_may() -> None:
    wrong = [(source, target) for source, target in EDGES
             if (a := source.split(".")[0]) != (b := target.split(".")[0])
             and b not in MAY_IMPORT[a]]
    assert wrong == []


def test_shared_core_imports_no_domain_but_wire_models() -> None:
    wrong = [(source, target) for source, target in EDGES
             if source.startswith("shared.") and shared_unit(source) in CORE
             and target.startswith("shared.") and shared_unit(target) in LAYERS
             and not target.endswith(".schemas")]
    assert wrong == []


def test_domains_import_no_higher_layer_but_its_wire_models() -> None:
    wrong = [(source, target) for source, target in EDGES
             if source.startswith("shared.") and target.startswith("shared.")
             and shared_unit(source) in LAYERS and shared_unit(target) in LAYERS
             and LAYERS[shared_unit(target)] > LAYERS[shared_unit(source)]
             and not target.endswith(".schemas")]
    assert wrong == []


def test_nothing_imports_the_command_line() -> None:
    assert [(source, target) for source, target in EDGES if target == "shared.cli"] == []


@pytest.mark.parametrize("schemas", sorted(name for name in MODULES
                                           if name.endswith(".schemas")))
def test_wire_models_import_no_domain_logic_and_no_database(schemas: str) -> None:
    domain = schemas.rpartition(".")[0]
    wrong = [target for source, target in EDGES if source == schemas
             and ((target.startswith(domain + ".") and not target.endswith(".schemas"))
                  or target.startswith("shared.db"))]
    assert wrong == []


def test_no_module_imports_itself_through_others() -> None:
    graph: dict[str, set[str]] = {name: set() for name in MODULES}
    for source, target in EDGES:
        graph[source].add(target)
    cycles = []
    done: set[str] = set()

    def visit(name: str, path: list[str]) -> None:
        if name in path:
            cycles.append([*path[path.index(name):], name])
            return
        if name in done:
            return
        for target in sorted(graph[name]):
            visit(target, [*path, name])
        done.add(name)

    for name in sorted(graph):
        visit(name, [])
    assert cycles == []
