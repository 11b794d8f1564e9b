"""The `lukhas` command as a user runs it: up (with a processor), status, demo, put, get,
delete, exit codes, down — all on real processes, in a data dir and on ports of its own."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration


class Lukhas:
    def __init__(self, data_dir: Path) -> None:
        self.env = {**os.environ, "LUKHAS_DATA_DIR": str(data_dir)}
        self.env.pop("LUKHAS_BOOTSTRAP", None)
        self.env.pop("LUKHAS_API_URL", None)

    def __call__(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            [sys.executable, "-m", "lukhas_context.ops", *args],
            env=self.env, capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        if check and done.returncode != 0:
            raise AssertionError(f"lukhas {' '.join(args)} -> {done.returncode}\n{done.stderr}")
        return done


@pytest.fixture(scope="module")
def lukhas(
    tmp_path_factory: pytest.TempPathFactory, free_ports: Callable[[int], int]
) -> Iterator[Lukhas]:
    data_dir = tmp_path_factory.mktemp("cli-cluster")
    run = Lukhas(data_dir)
    base = free_ports(4)
    up = ["up", "--port-base", str(base), "--redis-port", str(base + 2),
          "--api-port", str(base + 3), "--partitions", "2", "--json"]  # fmt: skip
    if os.environ.get("LUKHAS_BOOTSTRAP"):
        up += ["--bootstrap", os.environ["LUKHAS_BOOTSTRAP"]]
    try:
        run.up_result = json.loads(run(*up).stdout)  # type: ignore[attr-defined]
        yield run
    finally:
        run("down", check=False)


def test_up_reports_every_part_ready(lukhas: Lukhas) -> None:
    status = json.loads(lukhas("status", "--json").stdout)
    assert status["kafka"]["ready"] is True and status["kafka"]["brokers"] >= 1
    assert status["redis"]["ready"] is True
    (processor,) = status["processors"]
    assert processor["pid"] > 0 and processor["ready"] is True
    assert processor["api"].startswith("http://127.0.0.1:")


def test_up_again_starts_nothing(lukhas: Lukhas) -> None:
    again = json.loads(lukhas("up", "--json").stdout)
    assert again["started"] == []
    assert again["processors"][0]["pid"] == lukhas.up_result["processors"][0]["pid"]  # type: ignore[attr-defined]


def test_demo_writes_and_reads_back(lukhas: Lukhas) -> None:
    out = lukhas("demo").stdout
    assert "put  demo:session-1 -> WAL" in out
    assert "hello, LUKHAS" in out
    assert "of 2 partitions:" in out and out.count("digest=") == 2


def test_checkpoint_then_offline_restore_gives_the_same_digests(lukhas: Lukhas) -> None:
    lukhas("put", "ck:1", '{"before": "checkpoint"}')
    taken = json.loads(lukhas("checkpoint", "--id", "cli-ck", "--json").stdout)
    assert [m["partition"] for m in taken["manifests"]] == [0, 1]
    served = json.loads(lukhas("status", "--json").stdout)["processors"][0]["partitions"]
    digests = {p["partition"]: p["digest"] for p in served}
    assert digests == {m["partition"]: m["digest"] for m in taken["manifests"]}

    busy = lukhas("restore", "-p", "0", "--no-progress", check=False)
    assert busy.returncode == 1 and "StoreInUseError" in busy.stderr
    stopped = json.loads(lukhas("down", "--processor-only", "--json").stdout)
    assert stopped["stopped"] == ["processor-0"]
    assert json.loads(lukhas("status", "--json").stdout)["kafka"]["ready"]
    reports = json.loads(lukhas("restore", "-p", "0", "-p", "1", "--json", "--no-progress").stdout)
    assert [(r["source"], r["checkpoint_id"]) for r in reports] == [("checkpoint", "cli-ck")] * 2
    assert {r["partition"]: r["digest"] for r in reports} == digests
    assert all(Path(r["moved_aside"]).is_dir() for r in reports)

    assert json.loads(lukhas("up", "--json").stdout)["started"] == ["processor-0"]
    served = json.loads(lukhas("status", "--json").stdout)["processors"][0]["partitions"]
    assert {p["partition"]: p["digest"] for p in served} == digests
    assert {p["opened_from"] for p in served} == {"local"}
    assert json.loads(lukhas("get", "ck:1", "--json").stdout)["doc"] == {"before": "checkpoint"}


def test_put_get_delete_with_json_output_and_exit_codes(lukhas: Lukhas) -> None:
    receipt = json.loads(lukhas("put", "cli:1", '{"b": 2, "a": 1}', "--ttl", "60", "--json").stdout)
    assert set(receipt) == {"context_id", "partition", "offset", "event_id"}
    position = f"{receipt['partition']}:{receipt['offset']}"
    ctx = json.loads(lukhas("get", "cli:1", "--after", position, "--json").stdout)
    assert ctx["doc"] == {"a": 1, "b": 2} and ctx["version"] == 1
    assert ctx["expires_at_ms"] is not None and len(ctx["checksum"]) == 16
    text = lukhas("get", "cli:1").stdout
    assert "version 1" in text and "checksum" in text and "expires" in text

    deleted = json.loads(lukhas("delete", "cli:1", "--json").stdout)
    gone = lukhas("get", "cli:1", "--after", f"{deleted['partition']}:{deleted['offset']}",
                  check=False)  # fmt: skip
    assert gone.returncode == 3
    assert gone.stderr.strip() == "lukhas: error: context 'cli:1' not found"

    bad_json = lukhas("put", "cli:2", "{nope", check=False)
    assert bad_json.returncode == 2 and "does not parse" in bad_json.stderr
    not_object = lukhas("put", "cli:2", "[1, 2]", check=False)
    assert not_object.returncode == 2 and "JSON object" in not_object.stderr
    bad_ttl = lukhas("put", "cli:2", "{}", "--ttl", "-5", check=False)
    assert bad_ttl.returncode == 1 and "InvalidTTLError" in bad_ttl.stderr
    long_id = lukhas("put", "x" * 300, "{}", check=False)
    assert long_id.returncode == 1 and "InvalidContextIdError" in long_id.stderr
    for result in (bad_json, not_object, bad_ttl, long_id):
        assert len(result.stderr.strip().splitlines()) == 1


def test_patch_touch_conditions_dry_run_and_outcomes(lukhas: Lukhas) -> None:
    def position(result: subprocess.CompletedProcess[str]) -> str:
        receipt = json.loads(result.stdout)
        return f"{receipt['partition']}:{receipt['offset']}"

    first = position(lukhas("put", "m:1", '{"msgs": []}', "--if-version", "0", "--json"))
    assert json.loads(lukhas("outcome", first, "--json").stdout)["status"] == "applied"
    again = position(lukhas("put", "m:1", '{"msgs": []}', "--if-version", "0", "--json"))
    conflict = json.loads(lukhas("outcome", again, "--json").stdout)
    assert (conflict["status"], conflict["version"]) == ("conflict", 1)

    dry = json.loads(lukhas("patch", "m:1", '[{"op": "add", "path": "/msgs/-", "value": "hi"}]',
                            "--dry-run", "--json").stdout)  # fmt: skip
    assert dry["dry_run"] is True and dry["doc"] == {"msgs": ["hi"]} and dry["version"] == 2
    patched = position(lukhas("patch", "m:1", '[{"op": "add", "path": "/msgs/-", "value": "hi"}]',
                              "--if-version", "1", "--json"))  # fmt: skip
    merged = position(lukhas("patch", "m:1", '{"who": "me"}', "--merge", "--json"))
    touched = position(lukhas("touch", "m:1", "--ttl", "600", "--json"))
    ctx = json.loads(lukhas("get", "m:1", "--after", touched, "--json").stdout)
    assert ctx["doc"] == {"msgs": ["hi"], "who": "me"} and ctx["version"] == 4
    assert ctx["expires_at_ms"] is not None
    assert "applied" in lukhas("outcome", patched).stdout
    assert "applied" in lukhas("outcome", merged).stdout

    bad = position(lukhas("patch", "m:1", '[{"op": "remove", "path": "/nope"}]', "--json"))
    text = lukhas("outcome", bad).stdout
    assert "rejected" in text and "/nope" in text
    gone = json.loads(lukhas("delete", "m:1", "--dry-run", "--json").stdout)
    assert gone["status"] == "applied" and gone["kind"] == "delete"
    assert json.loads(lukhas("get", "m:1", "--json").stdout)["version"] == 4  # dry run: no write
    not_a_list = lukhas("patch", "m:1", '{"op": "add"}', check=False)
    assert not_a_list.returncode == 1 and "InvalidPatchError" in not_a_list.stderr


def test_a_crashed_processor_is_restarted_by_up(lukhas: Lukhas) -> None:
    pid = json.loads(lukhas("status", "--json").stdout)["processors"][0]["pid"]
    os.kill(pid, 9)
    again = json.loads(lukhas("up", "--json").stdout)
    assert again["started"] == ["processor-0"]
    assert again["processors"][0]["pid"] != pid
    out = lukhas("demo").stdout
    assert "version 2" in out  # the demo context from before the crash is still there


def test_down_stops_everything_and_keeps_data(lukhas: Lukhas) -> None:
    receipt = json.loads(lukhas("put", "kept", '{"k": 1}', "--json").stdout)
    position = f"{receipt['partition']}:{receipt['offset']}"
    result = json.loads(lukhas("down", "--json").stdout)
    assert "processor-0" in result["stopped"] and "redis" in result["stopped"]
    status = json.loads(lukhas("status", "--json").stdout)
    assert status["kafka"]["ready"] is False or os.environ.get("LUKHAS_BOOTSTRAP")
    assert status["redis"]["ready"] is False
    lukhas("up")
    ctx = json.loads(lukhas("get", "kept", "--after", position, "--json", "--timeout", "30").stdout)
    assert ctx["doc"] == {"k": 1}
