"""Guards for the three packaging traps of STYLE.md, and for the install's cut: the base
install is the client (its imports need no extra), each extra is named where a command misses
it, and pyproject's ranges hold the versions CI pins in constraints.txt (the installs are
simulated by making the extras' packages unimportable in a child process)."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from lukhas_context.ops.cli.errors import EXTRA_OF_MODULE

ROOT = Path(__file__).resolve().parents[2]
FOLDERS = {"schemas", "streams", "state", "processors", "ops"}


@pytest.mark.parametrize("bare", sorted(FOLDERS))
def test_bare_top_level_names_do_not_import(bare: str) -> None:
    assert importlib.util.find_spec(bare) is None


def test_the_wheel_holds_every_package_and_data_file(tmp_path: Path) -> None:
    """An editable install imports a sub-package that the wheel lacks; so build the wheel."""
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
         "-w", str(tmp_path), str(ROOT)],
        check=True, capture_output=True, cwd=tmp_path,
    )  # fmt: skip
    (wheel,) = tmp_path.glob("lukhas_context-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    expected = set()
    for folder in FOLDERS:
        for path in (ROOT / folder).rglob("*"):
            # .html, .js, .css, .svg: the console's files (processors/static), served from it
            console = {".html", ".js", ".css", ".svg"}
            if path.suffix in {".py", ".avsc", *console} or path.name == "py.typed":
                rel = path.relative_to(ROOT).as_posix()
                expected.add(f"lukhas_context/{rel}")
    expected |= {"lukhas_context/__init__.py", "lukhas_context/py.typed"}  # the public names
    assert expected - names == set()
    assert not any(
        n.startswith(("state/", "streams/", "lukhas_context/lukhas_context")) for n in names
    )


@pytest.mark.parametrize("folder", sorted(FOLDERS | {"lukhas_context"}))
def test_each_mapped_folder_is_typed(folder: str) -> None:
    assert (ROOT / folder / "py.typed").exists()


def test_schemas_ship_as_package_data() -> None:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    data = config["tool"]["setuptools"]["package-data"]
    assert "avro/*.avsc" in data["lukhas_context.schemas"]
    from lukhas_context.schemas.registry import SchemaRegistry

    registry = SchemaRegistry.shipped()
    assert [v.version for v in registry.versions("ContextEvent")] == [1]
    assert [v.version for v in registry.versions("ContextChange")] == [1]


def test_the_top_level_package_is_only_the_public_names() -> None:
    """``from lukhas_context import ContextClient`` and ``__version__`` (issue 10): the top
    ``__init__`` re-exports names and loads them on first use (what importing it loads is
    checked in test_layers.py)."""
    from importlib import metadata

    import lukhas_context

    assert lukhas_context.__version__ == metadata.version("lukhas_context")
    assert Path(lukhas_context.__file__ or "") == ROOT / "lukhas_context" / "__init__.py"
    assert set(lukhas_context.__all__) == {"__version__", *lukhas_context._EXPORTS}
    for name in lukhas_context.__all__:
        assert getattr(lukhas_context, name) is not None, name
    from lukhas_context.streams.client import ContextClient

    assert lukhas_context.ContextClient is ContextClient
    with pytest.raises(AttributeError, match="no attribute 'Nope'"):
        _ = lukhas_context.Nope


def test_the_native_extension_is_built_unless_switched_off() -> None:
    """The native tests skip when the extension is missing; this makes a build that silently
    lost it fail instead (the pure-Python run switches it off on purpose)."""
    import os

    from lukhas_context.processors import round as partition_round
    from lukhas_context.schemas import patch
    from lukhas_context.streams import watch

    if os.environ.get("LUKHAS_TEST_PURE_PYTHON") == "1":
        assert partition_round.native_fold is None and watch._read_change is None
        assert patch._native_diff is None
    else:
        assert partition_round.native_fold is not None and watch._read_change is not None
        assert patch._native_diff is not None
        assert patch._native_diff.__module__ == "lukhas_context.schemas._fastjson"
        # Each where its package needs it: the change decoder in schemas (streams imports it),
        # the fold's loop in processors; no import from streams reaches into processors.
        assert watch._read_change.__module__ == "lukhas_context.schemas._fastchange"
        assert partition_round.native_fold.__module__ == "lukhas_context.processors._fastfold"


PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
#: What the base install does not have: every extra's top-level modules.
NOT_IN_BASE = [*sorted(EXTRA_OF_MODULE), "click", "opentelemetry"]

BLOCKER = """
import importlib.abc, sys
BLOCKED = set({blocked!r})
class Blocker(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
sys.meta_path.insert(0, Blocker())
"""


def run(code: str, blocked: list[str]) -> subprocess.CompletedProcess[str]:
    source = BLOCKER.format(blocked=blocked) + code
    return subprocess.run(
        [sys.executable, "-c", source], capture_output=True, text=True, timeout=120
    )


def test_the_client_needs_no_extra() -> None:
    done = run(
        """
import asyncio
from lukhas_context import ClientConfig, ContextClient
from lukhas_context.schemas.event import Put
from lukhas_context.streams.exceptions import LockUnavailableError

async def main():
    config = ClientConfig("127.0.0.1:1", "http://127.0.0.1:1", redis_url="redis://127.0.0.1:1")
    client = ContextClient(config)
    key, value = client.event("c:1", Put(b'{"a":1}'), None)[:2]
    assert key == b"c:1" and value
    try:
        client.lock("x", ttl=5)
    except LockUnavailableError as exc:
        print("LOCKS:", exc)
    third = {m.split(".")[0] for m in sys.modules} - set(sys.stdlib_module_names)
    print("IMPORTED:", sorted(m for m in third if m in BLOCKED))

import sys
asyncio.run(main())
""",
        NOT_IN_BASE,
    )
    assert done.returncode == 0, done.stderr
    assert "IMPORTED: []" in done.stdout
    assert "pip install 'lukhas-context[locks]'" in done.stdout, done.stdout


def test_the_command_says_which_extra_it_needs() -> None:
    cli = "import runpy; runpy.run_module('lukhas_context.ops', run_name='__main__')"
    done = run(f"import sys; sys.argv = ['lukhas', '--help']; {cli}", ["click"])
    assert done.returncode == 1
    assert done.stderr == (
        "lukhas: error: the lukhas command needs the click package: pip install "
        "'lukhas-context[cli]' (or [server] to run workers too)\n"
    )
    argv = "['lukhas', 'worker', '--bootstrap', '127.0.0.1:1', '--state-dir', '/nonexistent']"
    done = run(f"import sys; sys.argv = {argv}; {cli}", ["rocksdict"])
    assert done.returncode == 1, done.stderr
    assert done.stderr.strip() == (
        "lukhas: error: this command needs the rocksdict package: pip install "
        "'lukhas-context[server]'"
    )


def test_dependencies_are_ranges_held_by_the_constraints() -> None:
    project = PYPROJECT["project"]
    extras = project["optional-dependencies"]
    assert set(EXTRA_OF_MODULE.values()) <= set(extras)
    pins = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, _, version = line.partition("==")
            pins[name.strip().lower()] = version.strip()
    runtime = [Requirement(r) for r in project["dependencies"]]
    runtime += [Requirement(r) for name, reqs in extras.items() if name != "dev" for r in reqs]
    for req in runtime:
        if req.name == "lukhas-context":
            continue
        assert not any(s.operator == "==" for s in req.specifier), f"{req}: a pin, not a range"
        assert req.name.lower() in pins, f"{req.name} has no pin in constraints.txt"
        assert req.specifier.contains(pins[req.name.lower()]), (req, pins[req.name.lower()])
    base = {Requirement(r).name for r in project["dependencies"]}
    assert base == {"aiokafka", "aiohttp", "fastavro", "orjson", "xxhash", "jsonpatch",
                    "jsonpointer"}  # fmt: skip
    assert project["scripts"]["lukhas"] == "lukhas_context.ops.entry:main"


def test_every_variable_the_code_reads_is_in_the_readmes_table() -> None:
    import re

    read = set()
    for folder in ("ops", "processors", "streams", "state", "schemas", "lukhas_context"):
        for path in (ROOT / folder).rglob("*.py"):
            read |= set(re.findall(r"LUKHAS_[A-Z_]+[A-Z]", path.read_text()))
    read.discard("LUKHAS_GET_BOOTSTRAP")  # named as the variable click does NOT read
    read.discard("LUKHAS_KAFKA")  # the prefix of the LUKHAS_KAFKA_<SETTING> variables
    readme = (ROOT / "README.md").read_text()
    table = readme[readme.index("## Configuration") : readme.index("## Development")]
    missing = sorted(v for v in read if f"`{v}`" not in table)
    assert not missing, missing
