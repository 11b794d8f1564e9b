"""Guards for the three packaging traps of STYLE.md."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

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
            if path.suffix in {".py", ".avsc"} or path.name == "py.typed":
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
