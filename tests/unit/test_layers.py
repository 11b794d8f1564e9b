"""The import layers of docs/architecture.md: ``ops`` → ``processors`` → ``streams`` →
``state`` → ``schemas``. A module may import its own package and the packages below it, never
one above (not even inside a function or under ``TYPE_CHECKING``), and no two modules import
each other round a cycle. Read from the source with ``ast``, so a lazy import counts too."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
#: Lowest first: each package may import the ones before it.
LAYERS = ["schemas", "state", "streams", "processors", "ops"]


def _modules() -> dict[str, Path]:
    found = {}
    for package in LAYERS:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found["lukhas_context." + ".".join(parts)] = path
    return found


MODULES = _modules()


def _imports(name: str, path: Path) -> set[str]:
    """The ``lukhas_context`` modules that ``name`` imports anywhere in its source."""
    out: set[str] = set()
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name.startswith("lukhas_context."))
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{anchor}.{base}" if base else anchor
            if not base.startswith("lukhas_context."):
                continue
            for alias in node.names:  # `from pkg import module` imports the module
                sub = f"{base}.{alias.name}"
                out.add(sub if sub in MODULES else base)
    return out


GRAPH = {name: _imports(name, path) for name, path in MODULES.items()}


def _layer(module: str) -> int:
    return LAYERS.index(module.split(".")[1])


def test_the_scan_sees_the_package() -> None:
    assert {m.split(".")[1] for m in MODULES} == set(LAYERS)
    assert "lukhas_context.schemas.codec" in GRAPH["lukhas_context.streams.writer"]


@pytest.mark.parametrize("module", sorted(MODULES))
def test_no_module_imports_a_layer_above_its_own(module: str) -> None:
    upward = sorted(i for i in GRAPH[module] if _layer(i) > _layer(module))
    assert upward == [], f"{module} imports {upward}: {LAYERS[_layer(module)]} is below them"


def test_no_import_cycle() -> None:
    """Depth-first search over module imports; a back edge is a cycle."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(module: str) -> None:
        state[module] = 1
        path.append(module)
        for nxt in sorted(GRAPH.get(module, ())):
            if nxt not in GRAPH:
                continue
            if state.get(nxt) == 1:
                cycle = [*path[path.index(nxt) :], nxt]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if nxt not in state:
                visit(nxt)
        path.pop()
        state[module] = 2

    for module in sorted(GRAPH):
        if module not in state:
            visit(module)


@pytest.mark.parametrize(
    ("imported", "not_loaded"),
    [
        # A producer or subscriber process needs no RocksDB.
        (
            ["lukhas_context.streams.client", "lukhas_context.streams.watch",
             "lukhas_context.streams.barriers"],
            ["rocksdict", "lukhas_context.state.store"],
        ),
        # The top package loads its public names on first use only.
        (
            ["lukhas_context", "lukhas_context.schemas.codec"],
            ["rocksdict", "lukhas_context.state.store", "lukhas_context.streams.client"],
        ),
    ],
)  # fmt: skip
def test_what_an_import_does_not_load(imported: list[str], not_loaded: list[str]) -> None:
    code = (
        f"import sys\nimport {', '.join(imported)}\n"
        f"print(sorted(set({not_loaded!r}) & set(sys.modules)))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert done.stdout.strip() == "[]", done.stdout
