"""The `lukhas` command as a user runs it: up (with a processor), status, demo, put, get,
delete, exit codes, down — all on real processes, in a data dir and on ports of its own."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from aiokafka import AIOKafkaProducer

pytestmark = pytest.mark.integration


class Lukhas:
    def __init__(self, data_dir: Path) -> None:
        self.env = {**os.environ, "LUKHAS_DATA_DIR": str(data_dir)}
        self.env.pop("LUKHAS_BOOTSTRAP", None)
        self.env.pop("LUKHAS_API_URL", None)

    def __call__(
        self, *args: str, check: bool = True, stdin: str | None = None, cwd: Path | None = None
    ) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            [sys.executable, "-m", "lukhas_context.ops", *args], input=stdin, cwd=cwd,
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
    partly = lukhas("status", "--json", check=False)
    assert json.loads(partly.stdout)["kafka"]["ready"]
    assert partly.returncode == 1 and partly.stderr.startswith(
        "lukhas: error: not ready: processor"
    )
    restored = lukhas("restore", "-p", "0", "-p", "1", "--json", "--no-progress")
    # Asked for: no ERROR, and nothing called "unusable" (the old store is fine, and kept).
    assert "ERROR" not in restored.stderr and "unusable" not in restored.stderr, restored.stderr
    reports = json.loads(restored.stdout)
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
    # --after: the old name of --min-offset, still taken, with a word on stderr
    old = lukhas("get", "cli:1", "--after", position, "--json")
    assert old.stderr.strip() == "lukhas: --after is deprecated: use --min-offset"
    ctx = json.loads(old.stdout)
    assert ctx["doc"] == {"a": 1, "b": 2} and ctx["version"] == 1
    assert ctx["expires_at_ms"] is not None and len(ctx["checksum"]) == 16
    text = lukhas("get", "cli:1").stdout
    assert "version 1" in text and "checksum" in text and "expires" in text

    deleted = json.loads(lukhas("delete", "cli:1", "--json").stdout)
    gone = lukhas("get", "cli:1", "--min-offset", f"{deleted['partition']}:{deleted['offset']}",
                  check=False)  # fmt: skip
    assert gone.returncode == 3
    assert gone.stderr.strip() == "lukhas: error: context 'cli:1' not found"

    bad_json = lukhas("put", "cli:2", "{nope", check=False)
    assert bad_json.returncode == 2 and "does not parse" in bad_json.stderr
    not_object = lukhas("put", "cli:2", "[1, 2]", check=False)
    assert not_object.returncode == 2 and "JSON object" in not_object.stderr
    bad_ttl = lukhas("put", "cli:2", "{}", "--ttl", "-5", check=False)
    assert bad_ttl.returncode == 2 and "'--ttl'" in bad_ttl.stderr  # a usage error now
    long_id = lukhas("put", "x" * 300, "{}", check=False)
    assert long_id.returncode == 2 and "InvalidContextIdError" in long_id.stderr  # refused, unsent
    for result in (bad_json, not_object, bad_ttl, long_id):
        assert len(result.stderr.strip().splitlines()) == 1


def test_patch_touch_conditions_dry_run_and_outcomes(lukhas: Lukhas) -> None:
    def position(result: subprocess.CompletedProcess[str]) -> str:
        receipt = json.loads(result.stdout)
        return f"{receipt['partition']}:{receipt['offset']}"

    first = position(lukhas("put", "m:1", '{"msgs": []}', "--if-version", "0", "--json"))
    assert json.loads(lukhas("outcome", first, "--json").stdout)["status"] == "applied"
    again = lukhas("put", "m:1", '{"msgs": []}', "--if-version", "0", "--json", check=False)
    assert again.returncode == 4 and json.loads(again.stdout)["outcome"]["status"] == "conflict"
    conflict = lukhas("outcome", position(again), "--json", check=False)
    assert conflict.returncode == 4
    assert (json.loads(conflict.stdout)["status"], json.loads(conflict.stdout)["version"]) == (
        "conflict",
        1,
    )

    dry = json.loads(lukhas("patch", "m:1", '[{"op": "add", "path": "/msgs/-", "value": "hi"}]',
                            "--dry-run", "--json").stdout)  # fmt: skip
    assert dry["dry_run"] is True and dry["doc"] == {"msgs": ["hi"]} and dry["version"] == 2
    patched = position(lukhas("patch", "m:1", '[{"op": "add", "path": "/msgs/-", "value": "hi"}]',
                              "--if-version", "1", "--json"))  # fmt: skip
    merged = position(lukhas("patch", "m:1", '{"who": "me"}', "--merge", "--json"))
    touched = position(lukhas("touch", "m:1", "--ttl", "600", "--json"))
    ctx = json.loads(lukhas("get", "m:1", "--min-offset", touched, "--json").stdout)
    assert ctx["doc"] == {"msgs": ["hi"], "who": "me"} and ctx["version"] == 4
    assert ctx["expires_at_ms"] is not None
    assert "applied" in lukhas("outcome", patched).stdout
    assert "applied" in lukhas("outcome", merged).stdout

    bad = position(lukhas("patch", "m:1", '[{"op": "remove", "path": "/nope"}]', "--json"))
    rejected = lukhas("outcome", bad, check=False)
    assert rejected.returncode == 5
    assert "rejected" in rejected.stdout and "/nope" in rejected.stdout
    gone = json.loads(lukhas("delete", "m:1", "--dry-run", "--json").stdout)
    assert gone["status"] == "applied" and gone["kind"] == "delete"
    assert json.loads(lukhas("get", "m:1", "--json").stdout)["version"] == 4  # dry run: no write
    not_a_list = lukhas("patch", "m:1", '{"op": "add"}', check=False)
    assert not_a_list.returncode == 2 and "InvalidPatchError" in not_a_list.stderr
    # Issue 9: an invalid operation was appended and exited 0; now nothing is sent.
    frob = lukhas("patch", "m:1", '[{"op": "frob", "path": "/x"}]', check=False)
    assert frob.returncode == 2 and "unknown op 'frob'" in frob.stderr
    assert json.loads(lukhas("get", "m:1", "--json").stdout)["version"] == 4


def _position(result: subprocess.CompletedProcess[str]) -> str:
    receipt = json.loads(result.stdout)
    return f"{receipt['partition']}:{receipt['offset']}"


def test_writes_wait_for_their_outcome_and_exit_with_its_code(lukhas: Lukhas) -> None:
    """A condition makes a write wait for its outcome (--no-wait opts out, --wait opts in),
    and the exit code says it: 0 applied, 4 conflict, 5 rejected; `outcome` too."""
    applied = lukhas("put", "w:1", '{"n": 1}', "--if-version", "0", "--json")
    assert json.loads(applied.stdout)["outcome"] == {
        "status": "applied", "version": 1, "reason": None, "duplicate_of": None,
    }  # fmt: skip
    conflict = lukhas("patch", "w:1", '[{"op": "replace", "path": "/n", "value": 2}]',
                      "--if-version", "5", check=False)  # fmt: skip
    assert conflict.returncode == 4, conflict.stderr
    assert "conflict (version 1): expected version 5" in conflict.stdout
    position = conflict.stdout.split(" -> ")[1].split()[0]
    again = lukhas("outcome", position, check=False)
    assert again.returncode == 4 and "conflict" in again.stdout

    not_waited = lukhas("patch", "w:1", "[]", "--if-version", "5", "--no-wait", "--json")
    assert "outcome" not in json.loads(not_waited.stdout)  # appended; exit 0
    assert lukhas("outcome", _position(not_waited), check=False).returncode == 4

    checksum = lukhas("patch", "w:1", '{"m": 1}', "--merge", "--expect-checksum",
                      "0000000000000000", check=False)  # fmt: skip
    assert checksum.returncode == 5 and "rejected" in checksum.stdout
    rejected = lukhas("patch", "w:1", '[{"op": "remove", "path": "/nope"}]', "--wait",
                      "--json", check=False)  # fmt: skip
    assert rejected.returncode == 5
    assert json.loads(rejected.stdout)["outcome"]["status"] == "rejected"
    dry = lukhas("delete", "w:1", "--if-version", "9", "--dry-run", "--json", check=False)
    assert dry.returncode == 4 and json.loads(dry.stdout)["status"] == "conflict"
    assert json.loads(lukhas("get", "w:1", "--json").stdout)["version"] == 1


def test_a_dead_lettered_record_has_its_own_exit_code(lukhas: Lukhas) -> None:
    bootstrap = lukhas.up_result["kafka"]["bootstrap"]  # type: ignore[attr-defined]

    async def append_garbage() -> tuple[int, int]:
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
        await producer.start()
        try:
            meta = await producer.send_and_wait(
                "lukhas.context.events", b"\x00not an event", key=b"dlq:1"
            )
        finally:
            await producer.stop()
        return meta.partition, meta.offset

    partition, offset = asyncio.run(append_garbage())
    done = lukhas("outcome", f"{partition}:{offset}", "--timeout", "30", "--json", check=False)
    assert done.returncode == 6, done.stderr
    assert json.loads(done.stdout)["status"] == "dead_lettered"


def test_big_documents_come_by_stdin_or_file(lukhas: Lukhas, tmp_path: Path) -> None:
    """Over 128 KiB, a document cannot be a command-line argument: `-` and `@FILE` take it."""
    doc = {"text": "x" * 300_000}
    piped = lukhas("put", "big:1", "-", "--json", stdin=json.dumps(doc))
    path = tmp_path / "big.json"
    path.write_text(json.dumps(doc))
    lukhas("put", "big:2", f"@{path}", "--json")
    patch = tmp_path / "patch.json"
    patch.write_text(json.dumps([{"op": "add", "path": "/more", "value": "y" * 200_000}]))
    patched = lukhas("patch", "big:2", f"@{patch}", "--if-version", "1", "--json")
    assert json.loads(patched.stdout)["outcome"]["status"] == "applied"
    one = json.loads(lukhas("get", "big:1", "--min-offset", _position(piped), "--json").stdout)
    two = json.loads(lukhas("get", "big:2", "--min-offset", _position(patched), "--json").stdout)
    assert one["doc"] == doc
    assert two["doc"] == {**doc, "more": "y" * 200_000} and two["version"] == 2


def test_a_position_past_the_end_is_not_found_at_once(lukhas: Lukhas) -> None:
    """No wait for an offset the WAL does not have: exit 3 and the partition's end. The
    --timeout is long so that a wait, were there one, would end in another error."""
    receipt = json.loads(lukhas("put", "end:1", "{}", "--json").stdout)
    partition, end = receipt["partition"], receipt["offset"] + 1
    past = lukhas("outcome", f"{partition}:{end + 5}", "--timeout", "20", check=False)
    assert past.returncode == 3, past.stderr
    assert f"no offset {end + 5} in partition {partition}: it ends at" in past.stderr
    nowhere = lukhas("outcome", "99:0", check=False)
    assert nowhere.returncode == 3 and "no partition 99: the WAL has 2" in nowhere.stderr
    after = lukhas("get", "end:1", "--min-offset", f"{partition}:{end + 5}", "--timeout", "20",
                   check=False)  # fmt: skip
    assert after.returncode == 3 and "no offset" in after.stderr
    # The offset just written exists, although the worker may not have fetched it yet.
    fresh = lukhas("put", "end:1", "{}", "--json")
    assert "applied (version 2)" in lukhas("outcome", _position(fresh), "--timeout", "20").stdout


def test_reads_from_another_directory_need_only_the_api(lukhas: Lukhas, tmp_path: Path) -> None:
    api = lukhas.up_result["processors"][0]["api"]  # type: ignore[attr-defined]
    receipt = lukhas("put", "far:1", '{"far": true}', "--json")
    elsewhere = Lukhas(tmp_path / "no-cluster-here")  # no bootstrap anywhere
    ctx = elsewhere("get", "far:1", "--min-offset", _position(receipt), "--api", api, "--json",
                    cwd=tmp_path)  # fmt: skip
    assert json.loads(ctx.stdout)["doc"] == {"far": True}
    done = elsewhere("outcome", _position(receipt), "--api", api, cwd=tmp_path)
    assert "applied" in done.stdout


def test_a_crashed_processor_is_restarted_by_up(lukhas: Lukhas) -> None:
    pid = json.loads(lukhas("status", "--json").stdout)["processors"][0]["pid"]
    os.kill(pid, 9)
    again = json.loads(lukhas("up", "--json").stdout)
    assert again["started"] == ["processor-0"]
    assert again["processors"][0]["pid"] != pid
    out = lukhas("demo").stdout
    assert "version 2" in out  # the demo context from before the crash is still there


def test_demo_json_prints_only_json(lukhas: Lukhas) -> None:
    out = json.loads(lukhas("demo", "--json").stdout)
    assert out["get"]["doc"]["messages"][0]["text"] == "hello, LUKHAS"
    assert out["put"]["context_id"] == "demo:session-1"
    assert len(out["checkpoint"]["manifests"]) == 2


def test_down_stops_everything_and_keeps_data(lukhas: Lukhas) -> None:
    receipt = json.loads(lukhas("put", "kept", '{"k": 1}', "--json").stdout)
    position = f"{receipt['partition']}:{receipt['offset']}"
    result = json.loads(lukhas("down", "--json").stdout)
    assert "processor-0" in result["stopped"] and "redis" in result["stopped"]
    down = lukhas("status", "--json", check=False)
    assert down.returncode == 1 and down.stderr.startswith("lukhas: error: not ready: ")
    status = json.loads(down.stdout)
    assert status["kafka"]["ready"] is False or os.environ.get("LUKHAS_BOOTSTRAP")
    assert status["redis"]["ready"] is False
    lukhas("up")
    ctx = json.loads(
        lukhas("get", "kept", "--min-offset", position, "--json", "--timeout", "30").stdout
    )
    assert ctx["doc"] == {"k": 1}


def test_a_write_retried_with_its_event_id_is_a_duplicate(lukhas: Lukhas) -> None:
    import uuid

    key = str(uuid.uuid4())
    first = lukhas("put", "retry:1", '{"n": 1}', "--event-id", key, "--wait")
    assert "applied (version 1)" in first.stdout and key in first.stdout
    again = lukhas("put", "retry:1", '{"n": 1}', "--event-id", key, "--wait")
    offset = first.stdout.split(" -> ")[1].split(" ")[0].split(":")[1]
    assert f"applied (version 1), a duplicate of offset {offset}" in again.stdout, again.stdout
    bad = lukhas("put", "retry:1", "{}", "--event-id", "not-a-uuid", check=False)
    assert bad.returncode == 2 and "is not a UUID" in bad.stderr
