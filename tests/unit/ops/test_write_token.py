"""``lukhas worker --api-write-token-file``: the write token of the API's routes that change
something (``POST /v1/checkpoints``) is the file's first line; without the option the API is
read-only."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from click.testing import CliRunner

from lukhas_context.ops.cli.worker import worker
from lukhas_context.ops.config import Settings, WorkerFlags
from lukhas_context.ops.exceptions import OpsError


def test_the_token_is_the_files_first_line(tmp_path: Path) -> None:
    path = tmp_path / "write-token"
    path.write_text("write-token-0123456789\nignored\n")
    assert Settings.write_token(path) == "write-token-0123456789"
    assert Settings.write_token(None) is None  # read-only


def test_an_empty_or_missing_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(OpsError, match="empty"):
        Settings.write_token(tmp_path / "empty")
    with pytest.raises(OpsError, match="cannot read"):
        Settings.write_token(tmp_path / "absent")


def test_the_worker_takes_the_option() -> None:
    assert "--api-write-token-file" in CliRunner().invoke(worker, ["--help"]).output
    names = {f.name for f in dataclasses.fields(WorkerFlags)}
    params = {p.name for p in worker.params}
    assert "api_write_token_file" in names & params
