"""The package's structure, drawn from its imports: no circle, no arrow up a floor, every module mapped.

The floors are docs/architecture.md's; this test holds them as data and checks that the page names every
module, so that the map and the code cannot drift apart unnoticed.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "event"

# Lowest first. A module may import from its own floor or any floor below, never above.
FLOORS: dict[str, tuple[str, ...]] = {
    "ground": (
        "errors", "config", "signals", "message", "middleware", "metrics", "logs", "endpoint", "eager",
        "acks", "batching", "drain", "loops", "pacing",
    ),
    "seam": ("driver", "amqp", "amqp.channel", "amqp.connection", "amqp.frames", "amqp.reasons", "amqp.url"),
    "rules": (
        "wire", "retry", "payloads", "protobuf", "tracing", "ratelimit", "consumer",
    ),
    "plumbing": ("sending", "topology", "connect", "management"),
    "engine": (
        "dispatch", "supervise", "pausing", "control", "cron", "dead", "publisher", "contracts", "services",
        "replies", "schedule_copies", "schedule_unbind", "processes", "depths", "idempotency", "runners",
        "runners.command",
        "runners.counts", "runners.hooks", "runners.http", "lifecycle", "pool", "testing",
    ),
    "edges": (
        "workers_file", "asyncapi", "protoc_plugin", "bench", "bench_child", "cli", "gateway",
        "gateway.apipage", "gateway.app", "gateway.history", "gateway.morgue", "gateway.pull",
        "gateway.backend", "gateway.openapi", "gateway.security", "gateway.server",
    ),
}  # fmt: skip
LEVEL = {module: level for level, modules in enumerate(FLOORS.values()) for module in modules}


def modules() -> list[str]:
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        if parts:
            found.append(".".join(parts))
    return found


def imports(module: str) -> set[str]:
    """The modules of ``event`` that ``module`` imports at its top level (not inside a function, not
    only for type checking): the arrows of the structure."""
    path = PACKAGE / (
        module.replace(".", "/")
        + ("/__init__.py" if (PACKAGE / module.replace(".", "/")).is_dir() else ".py")
    )
    tree = ast.parse(path.read_text())
    known = set(modules())
    found: set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.dump(node.test):
            continue
        for sub in ast.walk(node) if isinstance(node, ast.Try) else [node]:
            if isinstance(sub, ast.ImportFrom) and sub.module and sub.level == 0:
                if sub.module == "event":
                    found |= {a.name for a in sub.names if a.name in known}
                elif sub.module.startswith("event."):
                    name = sub.module.removeprefix("event.")
                    found |= {f"{name}.{a.name}" for a in sub.names if f"{name}.{a.name}" in known} or {name}
            elif isinstance(sub, ast.Import):
                found |= {a.name.removeprefix("event.") for a in sub.names if a.name.startswith("event.")}
    found.discard(module)
    return found


def test_every_module_has_a_floor_and_a_line_on_the_map() -> None:
    page = (ROOT / "docs" / "architecture.md").read_text()
    assert sorted(set(modules()) - set(LEVEL)) == [], (
        "give each new module a floor here and a line on the map"
    )
    assert sorted(set(LEVEL) - set(modules())) == [], "a module named here is gone"
    for module in modules():
        assert f"`{module.replace('.', '/')}" in page, f"docs/architecture.md does not name {module}"


def test_no_import_runs_up_a_floor() -> None:
    upward = [
        f"{module} ({floor_of(module)}) imports {target} ({floor_of(target)})"
        for module in modules()
        for target in imports(module)
        if LEVEL[target] > LEVEL[module]
    ]
    assert upward == []


def test_no_import_circle() -> None:
    graph = {module: imports(module) for module in modules()}
    state: dict[str, int] = {}
    circles: list[list[str]] = []

    def visit(module: str, path: list[str]) -> None:
        state[module] = 1
        for target in sorted(graph[module]):
            if state.get(target) == 1:
                circles.append([*path[path.index(target) :], target] if target in path else [module, target])
            elif target not in state:
                visit(target, [*path, target])
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert circles == []


def floor_of(module: str) -> str:
    return list(FLOORS)[LEVEL[module]]
