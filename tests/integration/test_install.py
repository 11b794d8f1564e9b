"""The README's install commands, as written: a wheel built from this tree installs the client
alone, and the ``cli`` extra adds the command. Fetches from PyPI (marked ``registry``)."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.registry]

ROOT = Path(__file__).resolve().parents[2]


def _readme_installs() -> list[str]:
    text = (ROOT / "README.md").read_text()
    block = re.search(r"## Install\n\n```\n(.*?)```", text, re.DOTALL)
    assert block is not None
    return [line.split("#")[0].strip() for line in block.group(1).splitlines()]


def _run(*argv: str | Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    """``argv`` run in ``cwd``: away from the source tree, whose folders would shadow the
    installed package (``python -c`` puts the working directory first on the path)."""
    return subprocess.run([str(a) for a in argv], capture_output=True, text=True, timeout=600,
                          cwd=cwd)  # fmt: skip


def test_the_readmes_installs_give_the_client_then_the_command(tmp_path: Path) -> None:
    installs = _readme_installs()
    assert installs[:2] == [
        "pip install lukhas-context",
        "pip install 'lukhas-context[cli]'",
    ], installs
    wheels = tmp_path / "wheels"
    here = tmp_path
    built = _run(sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", wheels, ROOT,
                 cwd=here)  # fmt: skip
    assert built.returncode == 0, built.stderr
    venv = tmp_path / "venv"
    assert _run(sys.executable, "-m", "venv", venv, cwd=here).returncode == 0
    pip = [venv / "bin" / "python", "-m", "pip"]
    where = ["--find-links", wheels, "-c", ROOT / "constraints.txt", "-q"]
    for n, command in enumerate(installs[:2]):
        words = shlex.split(command)  # pip install SPEC
        done = _run(*pip, *words[1:], *where, cwd=here)
        assert done.returncode == 0, done.stderr
        lukhas = _run(venv / "bin" / "lukhas", "--version", cwd=here)
        if n == 0:  # the client alone: it imports, and the command says what it lacks
            client = _run(venv / "bin" / "python", "-c",
                          "from lukhas_context import ClientConfig, ContextClient; "
                          "ContextClient(ClientConfig('127.0.0.1:1')); "
                          "import importlib.util as u; "
                          "print([m for m in ('click', 'rocksdict', 'redis', 'prometheus_client')"
                          " if u.find_spec(m)])", cwd=here)  # fmt: skip
            assert client.returncode == 0 and client.stdout.strip() == "[]", client
            assert lukhas.returncode == 1 and "pip install 'lukhas-context[cli]'" in lukhas.stderr
        else:
            assert lukhas.returncode == 0 and lukhas.stdout.startswith("lukhas "), lukhas
            worker = _run(venv / "bin" / "lukhas", "worker", "--bootstrap", "127.0.0.1:1",
                          "--state-dir", tmp_path / "state", cwd=tmp_path)  # fmt: skip
            assert worker.returncode == 1, worker.stderr
            assert "pip install 'lukhas-context[server]'" in worker.stderr, worker.stderr
