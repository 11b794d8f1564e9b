"""The recovery tools as an operator runs them, on a local cluster of its own (real broker,
real worker process). `lukhas inspect`: decoded records of every topic, bounded by offsets,
times and a context, a dead letter with its reason. `lukhas verify`: live stores against a
replay, a checkpoint and the worker itself while writes go on; then a store whose records
were changed behind the fold's back, found offline and live, by name; and the errors of bad
input."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shlex
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from lukhas_context.state.record import NO_CHECKSUM, ContextRecord
from lukhas_context.state.store import PartitionStore

from .conftest import v2_event, v2_writer_schema
from .test_cli import Lukhas

pytestmark = pytest.mark.integration

PARTITIONS = 3
ROOT = Path(__file__).resolve().parents[2]


def block(path: Path, heading: str) -> list[list[str]]:
    """The commands of the first ``sh`` block after ``heading``, as argument lists (without
    the ``lukhas`` executable and the comments)."""
    text = path.read_text()
    start = text.index(heading)
    found = re.search(r"```sh\n(.*?)```", text[start:], re.DOTALL)
    assert found is not None, heading
    commands = []
    for line in found.group(1).splitlines():
        words = shlex.split(line.split("#")[0])
        assert words[0] in ("lukhas", ".venv/bin/lukhas"), line
        commands.append(words[1:])
    return commands


@pytest.fixture(scope="module")
def lukhas(
    tmp_path_factory: pytest.TempPathFactory, free_ports: Callable[[int], int]
) -> Iterator[Lukhas]:
    data_dir = tmp_path_factory.mktemp("verify-cluster")
    run = Lukhas(data_dir)
    run.data_dir = data_dir  # type: ignore[attr-defined]
    base = free_ports(4)
    up = ["up", "--port-base", str(base), "--redis-port", str(base + 2),
          "--api-port", str(base + 3), "--partitions", str(PARTITIONS), "--json"]  # fmt: skip
    if os.environ.get("LUKHAS_BOOTSTRAP"):
        up += ["--bootstrap", os.environ["LUKHAS_BOOTSTRAP"]]
    try:
        run(*up)
        for i in range(60):
            run("put", f"v:{i}", json.dumps({"i": i}))
        run("patch", "v:3", '[{"op": "add", "path": "/x", "value": 1}]')
        run("delete", "v:4")
        run("put", "session:42", '{"turn": 1}')  # the runbook's example
        run("patch", "session:42", '{"turn": 2}', "--merge")
        yield run
    finally:
        run("down", check=False)


def state_dir(lukhas: Lukhas) -> Path:
    return lukhas.data_dir / "processor-0" / "state"  # type: ignore[attr-defined]


def reports(lukhas: Lukhas, *args: str, code: int = 0) -> list[dict]:  # type: ignore[type-arg]
    done = lukhas("verify", "--json", "--no-progress", *args, check=False)
    assert done.returncode == code, (done.returncode, done.stderr)
    data = json.loads(done.stdout)
    return data if isinstance(data, list) else [data]


def lines(lukhas: Lukhas, *args: str) -> list[dict]:  # type: ignore[type-arg]
    done = lukhas("inspect", *args, "--json")
    return [json.loads(line) for line in done.stdout.splitlines()]


def test_inspect_one_context_of_the_wal_with_outcomes(lukhas: Lukhas) -> None:
    found = lines(lukhas, "wal", "--context-id", "v:3")
    assert [(i["kind"], i["outcome"]) for i in found] == [("put", "applied"), ("patch", "applied")]
    first, second = found
    assert first["context_id"] == "v:3" and len(first["event_id"]) == 32
    p, o = (int(x) for x in first["position"].split(":"))
    assert int(second["position"].split(":")[1]) > o
    # bounded by offsets: --start is inclusive, --until exclusive
    assert lines(lukhas, "wal", "-p", str(p), "--start", str(o), "--until", str(o + 1)) == [first]
    assert len(lines(lukhas, "wal", "--limit", "7")) == 7
    old = lukhas("inspect", "wal", "--id", "v:4")  # the old name of --context-id, still taken
    assert old.stderr.strip() == "lukhas: --id is deprecated: use --context-id", old.stderr
    text = old.stdout.splitlines()
    assert [line.split()[3] for line in text] == ["put", "delete"]
    assert all(line.endswith("-> applied") for line in text)
    # by time: nothing was logged in 2099, everything after 2000
    assert lines(lukhas, "wal", "--start", "2099-01-01T00:00:00Z") == []
    assert len(lines(lukhas, "wal", "--start", "2000-01-01", "--limit", "5")) == 5


def test_inspect_changes_and_checkpoints(lukhas: Lukhas) -> None:
    changes = lines(lukhas, "changes", "--context-id", "v:4")
    assert [(c["version"], c["kind"]) for c in changes] == [(1, "put"), (2, "delete")]
    lukhas("checkpoint", "--id", "inspect-ck")
    manifests = [m for m in lines(lukhas, "checkpoints") if m["checkpoint_id"] == "inspect-ck"]
    assert sorted(m["partition"] for m in manifests) == list(range(PARTITIONS))
    assert all(len(m["digest"]) == 16 and m["next_offset"] > 0 for m in manifests)


def test_inspect_a_dead_letter_and_its_wal_record(lukhas: Lukhas) -> None:
    from aiokafka import AIOKafkaProducer

    bootstrap = json.loads(lukhas("status", "--json").stdout)["kafka"]["bootstrap"]

    async def send() -> tuple[int, int]:
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
        await producer.start()
        try:
            sent = await producer.send_and_wait("lukhas.context.events", b"\x00garbage",
                                                key=b"junk:1")  # fmt: skip
            return sent.partition, sent.offset
        finally:
            await producer.stop()

    p, o = asyncio.run(send())
    lukhas("outcome", f"{p}:{o}", check=False)  # waits until it is folded (exit 6)
    (dead,) = [d for d in lines(lukhas, "dlq") if d["source"] == f"{p}:{o}"]
    assert dead["context_id"] == "junk:1" and dead["reason"].startswith("BadMagicError")
    (wal,) = lines(lukhas, "wal", "--context-id", "junk:1")
    assert wal["position"] == f"{p}:{o}" and wal["undecodable"].startswith("BadMagicError")
    assert wal["outcome"].startswith("dead_lettered")
    text = lukhas("inspect", "dlq", "-p", str(p)).stdout
    assert f"from WAL {p}:{o}" in text and "BadMagicError" in text


def test_inspect_bad_input_is_one_line_and_its_code(lukhas: Lukhas) -> None:
    cases = [
        (("wal", "-p", "99"), 1, "no partition 99"),
        (("wal", "-p", "0", "--start", "99999999"), 1, "no offset 99999999"),
        (("wal", "--start", "yesterday"), 2, "neither an offset nor a time"),
        (("topics",), 2, "is not one of"),
        (("wal", "--bootstrap", "127.0.0.1:1"), 1, "cannot reach Kafka"),
    ]
    for args, code, text in cases:
        done = lukhas("inspect", *args, check=False)
        assert done.returncode == code, (args, done.returncode, done.stderr)
        assert text in done.stderr and len(done.stderr.strip().splitlines()) == 1, done.stderr


def test_history_of_one_context_from_its_index(lukhas: Lukhas) -> None:
    from aiokafka import AIOKafkaProducer

    lukhas("put", "h:1", '{"a": 1}')
    assert lukhas("put", "h:1", '{"a": 2}', "--if-version", "7", check=False).returncode == 4
    assert lukhas("patch", "h:1", '[{"op": "remove", "path": "/nope"}]', "--wait",
                  check=False).returncode == 5  # fmt: skip
    lukhas("delete", "h:1")
    bootstrap = json.loads(lukhas("status", "--json").stdout)["kafka"]["bootstrap"]

    async def garbage() -> tuple[int, int]:  # a record under the context's key that no one reads
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
        await producer.start()
        try:
            sent = await producer.send_and_wait("lukhas.context.events", b"\x00junk", key=b"h:1")
            return sent.partition, sent.offset
        finally:
            await producer.stop()

    p, o = asyncio.run(garbage())
    lukhas("outcome", f"{p}:{o}", check=False)  # waits until it is folded (exit 6)
    done = lukhas("history", "h:1", "--json")
    report = json.loads(done.stdout)
    events = report["events"]
    assert [(e["status"], e["version"]) for e in events] == [
        ("applied", 1), ("conflict", 1), ("rejected", 1), ("applied", 2), ("dead_lettered", 0),
    ]  # fmt: skip
    assert [e.get("kind") for e in events[:4]] == ["put", "put", "patch", "delete"]
    assert events[4]["offset"] == o and report["partition"] == p
    assert events[4]["undecodable"].startswith("BadMagicError")
    assert "version" in events[1]["reason"] and events[2]["reason"]
    assert all(len(e["event_id"]) == 32 for e in events[:4])
    assert report["covered_from"] == 0 and report["pruned_below"] == 0
    assert report["wal_error"] is None and not report["more"]
    assert "5 events of 'h:1' (2 applied, 1 conflict, 1 dead-lettered, 1 rejected)" in done.stderr
    # the same as text, one line each, and paged
    text = lukhas("history", "h:1").stdout.splitlines()
    assert len(text) == 5 and text[0].startswith(f"{p}:") and text[0].endswith("-> applied v1")
    assert "-> conflict (at v1): " in text[1] and "UNDECODABLE" in text[4]
    first = lukhas("history", "h:1", "--limit", "2", "--no-wal")
    assert first.stdout.count("(WAL not read)") == 2
    after = first.stdout.splitlines()[-1].split()[0].split(":")[1]
    assert f"more follow: --after {after}" in first.stderr
    rest = json.loads(lukhas("history", "h:1", "--after", after, "--json").stdout)["events"]
    assert [e["status"] for e in rest] == ["rejected", "applied", "dead_lettered"]
    # a context never written: no history, exit 3 (the JSON still says what was searched)
    none = lukhas("history", "never:written", "--json", check=False)
    assert none.returncode == 3 and json.loads(none.stdout)["events"] == []
    # the library call the command makes
    from lukhas_context.streams.client import ClientConfig, SyncContextClient

    api = json.loads(lukhas("status", "--json").stdout)["processors"][0]["api"]
    with SyncContextClient(ClientConfig(bootstrap=bootstrap, api_url=api)) as client:
        page = client.history("h:1", limit=3)
        assert [e.status for e in page.events] == ["applied", "conflict", "rejected"] and page.more


def test_history_bad_input_is_one_line_and_its_code(lukhas: Lukhas) -> None:
    import urllib.error
    import urllib.request

    cases = [
        (("h:1", "--limit", "0"), 2, "--limit"),
        (("h:1", "--after", "-1"), 2, "--after"),
        ((), 2, "Missing argument"),
        (("h:1", "--api", "http://127.0.0.1:1"), 1, "127.0.0.1:1"),
    ]
    for args, code, text in cases:
        done = lukhas("history", *args, check=False)
        assert done.returncode == code, (args, done.returncode, done.stderr)
        assert text in done.stderr and len(done.stderr.strip().splitlines()) == 1, done.stderr
    # no Kafka: the outcomes still, and why the events are not shown
    done = lukhas("history", "h:1", "--bootstrap", "127.0.0.1:1", check=False)
    assert done.returncode == 0 and "cannot reach Kafka" in done.stderr, done.stderr
    assert done.stdout.count("(WAL not read)") == 5
    api = json.loads(lukhas("status", "--json").stdout)["processors"][0]["api"]
    for query, text in [("limit=0", "limit must be 1 to 10000"), ("limit=10001", "limit"),
                        ("after=-1", "after"), ("after=x", "after"), ("from=3", "takes after"),
                        ("limit=1&limit=2", "given twice")]:  # fmt: skip
        with pytest.raises(urllib.error.HTTPError) as raised:
            urllib.request.urlopen(f"{api}/v1/contexts/h:1/history?{query}", timeout=10)
        assert raised.value.code == 400, query
        assert text in json.loads(raised.value.read())["error"], query
    # a long or odd id is just a context without history, never an error
    for odd in ["x" * 400, "%00%ff", "a%2Fb"]:
        with urllib.request.urlopen(f"{api}/v1/contexts/{odd}/history", timeout=10) as answer:
            assert json.loads(answer.read())["events"] == []


def test_the_state_as_of_a_time_and_a_position(lukhas: Lukhas, tmp_path: Path) -> None:
    _put, patch = lines(lukhas, "wal", "--context-id", "session:42")
    p, patch_offset = (int(x) for x in patch["position"].split(":"))
    # between the put and the patch, by the log's time: version 1
    before = tmp_path / "before"
    lukhas("replay", "--as-of", patch["log_time"], "-p", str(p), "--into", str(before),
           "--no-progress")  # fmt: skip
    old = json.loads(lukhas("get", "session:42", "--as-of", str(before), "--json").stdout)
    assert (old["version"], old["doc"]) == (1, {"turn": 1})
    # as of the patch's own position: version 2, and only that partition is built
    at = tmp_path / "at"
    built = json.loads(lukhas("replay", "--as-of", patch["position"], "--into", str(at),
                              "--json", "--no-progress").stdout)  # fmt: skip
    assert list(built["partitions"]) == [str(p)]
    assert built["partitions"][str(p)]["next_offset"] == patch_offset + 1
    new = json.loads(lukhas("get", "session:42", "--as-of", str(at), "--json").stdout)
    assert (new["version"], new["doc"]) == (2, {"turn": 2})
    # the same point gives the same state
    again = tmp_path / "again"
    twice = json.loads(lukhas("replay", "--as-of", patch["position"], "--into", str(again),
                              "--json", "--no-progress").stdout)  # fmt: skip
    assert twice["partitions"] == built["partitions"]
    # a context that did not exist then
    assert lukhas("get", "session:43", "--as-of", str(at), check=False).returncode in (1, 3)


def test_a_context_past_its_ttl_at_the_point_reads_absent(lukhas: Lukhas, tmp_path: Path) -> None:
    receipt = json.loads(lukhas("put", "ttl:1", '{"short": true}', "--ttl", "1",
                                "--json").stdout)  # fmt: skip
    position = f"{receipt['partition']}:{receipt['offset']}"
    # as of its own put it is there (whatever the clock says now)
    alive = tmp_path / "alive"
    lukhas("replay", "--as-of", position, "--into", str(alive), "--no-progress")
    ctx = json.loads(lukhas("get", "ttl:1", "--as-of", str(alive), "--json").stdout)
    assert ctx["version"] == 1 and ctx["expires_at_ms"] is not None
    at = f"ms:{ctx['expires_at_ms'] + 1}"
    # the Expire event the worker appends is logged after the expiry: the point is settled
    deadline = time.monotonic() + 60
    while not [i for i in lines(lukhas, "wal", "--context-id", "ttl:1") if i["kind"] == "expire"]:
        assert time.monotonic() < deadline, "no Expire event within 60 s"
        time.sleep(0.5)
    into = tmp_path / "expired"  # its partition: the Expire is logged there after the point
    lukhas("replay", "--as-of", at, "-p", str(receipt["partition"]), "--into", str(into),
           "--no-progress")  # fmt: skip
    gone = lukhas("get", "ttl:1", "--as-of", str(into), check=False)
    assert gone.returncode == 3 and "not found" in gone.stderr


def test_replay_as_of_bad_input(lukhas: Lukhas, tmp_path: Path) -> None:
    used = tmp_path / "used"
    lukhas("replay", "--as-of", "0:0", "--into", str(used), "--no-progress")
    cases = [
        (("--as-of", "0:0", "--into", str(used)), 1, "already holds a state"),
        (("--as-of", "0:99999999", "--into", str(tmp_path / "a")), 1, "no offset 99999999"),
        (("--as-of", "9:0", "--into", str(tmp_path / "b")), 1, "no partition 9"),
        (("--as-of", "2099-01-01", "--into", str(tmp_path / "c")), 1, "not 60 s in the past"),
        (("--as-of", "soon", "--into", str(tmp_path / "d")), 2, "neither an offset nor a time"),
        (("--as-of", "0:1,0:2", "--into", str(tmp_path / "e")), 2, "named twice"),
    ]
    for args, code, text in cases:
        done = lukhas("replay", *args, "--no-progress", check=False)
        assert done.returncode == code, (args, done.returncode, done.stderr)
        assert text in done.stderr and len(done.stderr.strip().splitlines()) == 1, done.stderr
    missing = lukhas("get", "x", "--as-of", str(tmp_path / "nothing"), check=False)
    assert missing.returncode == 1 and "holds no state" in missing.stderr


def test_live_stores_equal_a_replay_while_writes_go_on(lukhas: Lukhas) -> None:
    stop = threading.Event()
    written: list[int] = []

    def write() -> None:  # bounded: 40 writes at most
        for i in range(40):
            if stop.is_set():
                return
            lukhas("put", f"during:{i}", "{}")
            written.append(i)

    writer = threading.Thread(target=write)
    writer.start()
    try:
        found = reports(lukhas)
    finally:
        stop.set()
        writer.join()
    assert [r["partition"] for r in found] == list(range(PARTITIONS))
    for r in found:
        assert r["equal"] and r["differences"] == [], r
        assert r["subject"]["source"].startswith("worker http://127.0.0.1:")
        assert r["subject"]["recomputed"]["digest"] == r["subject"]["digest"]
        assert r["against"]["digest"] == r["subject"]["digest"]
        assert r["against"]["next_offset"] == r["next_offset"] > 0
    assert sum(r["subject"]["records"] for r in found) >= 60
    assert written  # the writer ran alongside
    # the frozen copies are gone
    assert not any((state_dir(lukhas) / ".verify").glob("*"))


def test_against_a_checkpoint_and_against_the_worker_itself(lukhas: Lukhas) -> None:
    lukhas("checkpoint", "--id", "verify-ck")
    lukhas("put", "after:ck", "{}")
    found = reports(lukhas, "--against", "checkpoint:verify-ck")
    assert all(r["equal"] for r in found)
    assert {r["against"]["source"].split(" (")[0] for r in found} == {"checkpoint verify-ck"}
    latest = reports(lukhas, "-p", "1", "--against", "checkpoint:latest")
    assert latest[0]["equal"]
    api = json.loads(lukhas("status", "--json").stdout)["processors"][0]["api"]
    (itself,) = reports(lukhas, "-p", "0", "--against", api)
    assert itself["equal"] and itself["against"]["source"] == f"worker {api}"


def test_bad_input_is_one_line_and_its_code(lukhas: Lukhas) -> None:
    cases = [
        (("--against", "nonsense"), 2, "usage error"),
        (("-p", "99"), 1, "no partition 99"),
        (("--against", "checkpoint:none-such", "-p", "0"), 1, "no checkpoint none-such"),
        (("--state-dir", "/nonexistent/dir"), 2, "no such directory"),
        (("--against", "http://127.0.0.1:1", "-p", "0"), 1, "cannot reach"),
        (("--limit", "0"), 2, "--limit"),
    ]
    for args, code, text in cases:
        done = lukhas("verify", "--no-progress", *args, check=False)
        assert done.returncode == code, (args, done.returncode, done.stderr)
        assert text in done.stderr and len(done.stderr.strip().splitlines()) == 1, done.stderr
    # the live stores are in use: verify them through the worker, not the files
    held = lukhas("verify", "--state-dir", str(state_dir(lukhas)), "-p", "0", check=False)
    assert held.returncode == 1 and "open in a running worker" in held.stderr


def test_a_changed_record_is_named_offline_and_live(lukhas: Lukhas) -> None:
    lukhas("down", "--processor-only")
    path = state_dir(lukhas) / "partition-1"
    with PartitionStore(path) as store:
        keys = [k for k, _ in store.items()]
        victim = keys[len(keys) // 2]
        record = store.get(victim)
        assert record is not None
        # the digest is kept consistent: only a comparison with the log can tell
        store.commit({victim: record._replace(version=record.version + 7),
                      b"v:ghost": record}, store.next_offset)  # fmt: skip
        assert store.check() == store.summary()
    offline = reports(lukhas, "--state-dir", str(state_dir(lukhas)), code=7)
    bad = [r for r in offline if not r["equal"]]
    assert [r["partition"] for r in bad] == [1]
    named = {d["context_id"]: d for d in bad[0]["differences"]}
    assert set(named) == {victim.decode(), "v:ghost"}
    assert named["v:ghost"]["against"] is None
    assert named[victim.decode()]["subject"]["version"] == record.version + 7
    assert named[victim.decode()]["against"]["version"] == record.version

    lukhas("up")
    text = lukhas("verify", "--no-progress", "-p", "1", check=False)
    assert text.returncode == 7
    assert "DIFFERS" in text.stdout and victim.decode() in text.stdout and "v:ghost" in text.stdout
    (first,) = reports(lukhas, "-p", "1", "--limit", "1", code=7)
    assert len(first["differences"]) == 1 and first["truncated"]

    # repaired the way the runbook says: rebuild the partition from the log
    repair = block(ROOT / "docs" / "runbook.md", "## A partition's store is wrong")
    assert repair[1][:2] == ["restore", "-p"] and repair[-1][:3] == ["verify", "-p", "1"]
    for command in repair:
        lukhas(*command)
    assert all(r["equal"] for r in reports(lukhas))


def test_the_readme_and_runbook_checks_run_as_written(lukhas: Lukhas, tmp_path: Path) -> None:
    runbook = ROOT / "docs" / "runbook.md"
    blocks = [
        block(ROOT / "README.md", "## Recovery tools"),
        block(runbook, "## Is the state right?"),
        block(runbook, "## What happened to context X?"),
        block(runbook, "## What did context X look like at 14:02?"),
        block(runbook, "## Something is in the dead-letter queue"),
        block(runbook, "## The WAL keeps growing"),
    ]
    # the states they build go to this test's directory, one per block
    commands = [
        [str(tmp_path / f"{b}-{Path(w).name}") if w.startswith("/tmp/") else w for w in c]
        for b, cmds in enumerate(blocks)
        for c in cmds
    ]
    assert len(commands) == 20
    lukhas("checkpoint")  # for checkpoint:latest, whichever tests ran before
    lukhas("put", "agent:1", '{"turn": 1}')  # the README's example context
    for command in commands:
        if command[:2] == ["dlq", "show"]:  # a position of the runbook's cluster, not this one
            done = lukhas(*command, check=False)
            assert done.returncode in (0, 3), done.stderr
            continue
        if command[0] == "get" and "--as-of" in command:
            # the times are before this cluster's first record: nothing existed then
            done = lukhas(*command, check=False)
            assert done.returncode == 3 and "not found" in done.stderr, done.stderr
            continue
        done = lukhas(*command)
        if command[0] == "verify" and "--json" not in command:
            assert "equal to" in done.stdout and "DIFFERS" not in done.stdout, done.stdout
        if command == ["history", "session:42"]:
            kinds = [line.split()[2] for line in done.stdout.splitlines()]
            assert kinds == ["put", "patch"] and "-> applied v2" in done.stdout, done.stdout


def test_wal_prune_keeps_every_restore_path(lukhas: Lukhas) -> None:
    lukhas("checkpoint", "--id", "before-prune")
    lukhas("put", "after:prune", '{"p": 1}')
    # the workers' dedupe window (100,000 records) keeps all of this small log
    (kept,) = json.loads(lukhas("wal", "prune", "-p", "0", "--json").stdout)
    assert kept["dedupe_window"] == 100_000 and kept["deletes"] == 0
    # a window of 2: the change-topic restore reads back 2 records before its coverage
    window = ["--dedupe-window", "2"]
    (entry,) = json.loads(lukhas("wal", "prune", "-p", "0", *window, "--json").stdout)
    ck = entry["oldest_checkpoint"]
    assert ck is not None and entry["kept_because"] == []
    assert entry["prune_to"] == min(ck["next_offset"], entry["changes_coverage"] - 2,
                                    entry["live_next_offset"]) > entry["log_start"]  # fmt: skip
    assert "log_start_now" not in entry  # shown, not done
    unchanged = lines(lukhas, "wal", "-p", "0", "--limit", "1")
    assert unchanged[0]["position"] == f"0:{entry['log_start']}"

    oldest = unchanged[0]["context_id"]  # its first event is about to be pruned
    done = json.loads(lukhas("wal", "prune", "-p", "0", *window, "--yes", "--json").stdout)
    assert done[0]["log_start_now"] == entry["prune_to"]
    assert (
        lines(lukhas, "wal", "-p", "0", "--limit", "1")[0]["position"] == f"0:{entry['prune_to']}"
    )
    # a full replay can no longer be made, and says where to start instead
    replay = lukhas("verify", "-p", "0", "--no-progress", check=False)
    assert replay.returncode == 1 and "WalTruncatedError" in replay.stderr
    assert "start from checkpoint" in replay.stderr
    (ok,) = reports(lukhas, "-p", "0", "--against", "checkpoint:latest")
    assert ok["equal"]
    live = ok["subject"]["digest"]

    # every restore path still gives the same state
    lukhas("down", "--processor-only")
    scratch = lukhas("restore", "-p", "0", "--from-scratch", "--no-progress", check=False)
    assert scratch.returncode == 1 and "start from checkpoint" in scratch.stderr
    digests = {}
    for how in ([], ["--from-changes"], ["--checkpoint", ck["id"]]):
        report = json.loads(lukhas("restore", "-p", "0", *how, "--json", "--no-progress").stdout)
        digests[" ".join(how) or "latest"] = (report["next_offset"], report["digest"])
    lukhas("up")
    (after,) = reports(lukhas, "-p", "0", "--against", "checkpoint:latest")
    assert after["equal"] and after["subject"]["digest"] == live
    # the history index dropped what the WAL no longer holds when the partition opened
    trimmed = lukhas("history", oldest, "--json", check=False)
    report = json.loads(trimmed.stdout)
    assert report["pruned_below"] == entry["prune_to"], report
    assert all(e["offset"] >= entry["prune_to"] for e in report["events"])
    assert f"pruned below offset {entry['prune_to']}" in trimmed.stderr
    # each ends at the change topic's coverage, or at its checkpoint when that is past it (a
    # barrier has no change): the same state
    assert len({digest for _, digest in digests.values()}) == 1, digests


def test_a_stale_local_store_below_the_pruned_log_is_set_aside(lukhas: Lukhas) -> None:
    """A worker that gets back a partition it held before the WAL was pruned finds its old
    store behind the log's start: set aside, and the partition restored from a checkpoint."""
    (before,) = reports(lukhas, "-p", "0", "--against", "checkpoint:latest")
    low = lines(lukhas, "wal", "-p", "0", "--limit", "1")[0]["position"]
    assert int(low.split(":")[1]) > 1  # pruned by the test before
    lukhas("down", "--processor-only")
    path = state_dir(lukhas) / "partition-0"
    shutil.rmtree(path)
    with PartitionStore(path) as stale:  # an old copy: one record folded
        stale.commit({b"stale:1": ContextRecord(1, b"{}", NO_CHECKSUM, None, 0, 1)}, 1)
    lukhas("up")
    (after,) = reports(lukhas, "-p", "0", "--against", "checkpoint:latest")
    assert after["equal"] and after["subject"]["records"] >= before["subject"]["records"]
    assert after["differences"] == [] and after["next_offset"] >= before["next_offset"]
    status = json.loads(lukhas("status", "--json").stdout)["processors"][0]["partitions"]
    (p0,) = [p for p in status if p["partition"] == 0]
    assert p0["opened_from"] == "checkpoint", p0
    assert any((state_dir(lukhas) / "quarantine").glob("partition-0-*"))


def dead_letters(lukhas: Lukhas, *args: str) -> list[dict]:  # type: ignore[type-arg]
    done = lukhas("dlq", "list", "--json", *args)
    return [json.loads(line) for line in done.stdout.splitlines()]


def test_dead_letters_of_a_newer_schema_fold_once_the_worker_knows_it(
    lukhas: Lukhas, tmp_path: Path
) -> None:
    """Events written with a schema version the worker does not know are dead-lettered; the
    worker is upgraded (`--schema-dir`); the re-drive folds them, once however often it runs,
    to the versions and documents of twins written with the shipped schema all along."""
    from aiokafka import AIOKafkaProducer

    v2 = v2_writer_schema(tmp_path / "schemas")
    bootstrap = json.loads(lukhas("status", "--json").stdout)["kafka"]["bootstrap"]
    docs = [("up:0", '{"n": 0}'), ("up:0", '{"n": 0, "again": true}'), ("up:1", '{"n": 1}')]

    async def send() -> list[str]:
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
        await producer.start()
        try:
            sent = [await producer.send_and_wait("lukhas.context.events", v2_event(v2, c, d),
                                                 key=c.encode()) for c, d in docs]  # fmt: skip
            await producer.send_and_wait("lukhas.context.events", b"\x00junk", key=b"junk:2")
            return [f"{s.partition}:{s.offset}" for s in sent]
        finally:
            await producer.stop()

    sources = asyncio.run(send())
    for context_id, doc in docs:  # the twins, valid all along
        lukhas("put", context_id.replace("up:", "ref:"), doc)
    assert lukhas("outcome", sources[-1], check=False).returncode == 6  # dead-lettered
    found = dead_letters(lukhas, "--reason", "unknownschema")
    assert [(d["context_id"], d["source"]) for d in found] == [
        (c, s) for (c, _), s in zip(docs, sources, strict=True)
    ]
    shown = lukhas("dlq", "show", found[0]["position"]).stdout
    assert "header error.class: UnknownSchemaError" in shown and "key: up:0" in shown
    detail = json.loads(lukhas("dlq", "show", found[0]["position"], "--json").stdout)
    assert detail["headers"]["schema.fingerprint"] == v2.fingerprint.hex()

    # Not upgraded yet: the dry run (the default) says they would fail again, appends nothing.
    dry = lukhas("dlq", "redrive", "--reason", "UnknownSchemaError")
    assert dry.stdout.count("would be dead_lettered (UnknownSchemaError") == 3, dry.stdout
    assert "dry run: add --yes" in dry.stderr
    assert len(json.loads(lukhas("history", "up:0", "--json").stdout)["events"]) == 2

    # The upgrade: the worker decodes the newer writer schema too.
    lukhas("down", "--processor-only")
    lukhas.env["LUKHAS_SCHEMA_DIR"] = str(tmp_path / "schemas")
    try:
        lukhas("up")
        dry = lukhas("dlq", "redrive", "--reason", "UnknownSchemaError", "--dry-run")
        assert dry.stdout.count("would be applied") == 3, dry.stdout
        done = json.loads(lukhas("dlq", "redrive", "--reason", "UnknownSchemaError", "--yes",
                                 "--json").stdout)  # fmt: skip
        assert done["appended"] and [
            (r["context_id"], r["outcome"]["status"], r["outcome"]["version"])
            for r in done["records"]
        ] == [("up:0", "applied", 1), ("up:0", "applied", 2), ("up:1", "applied", 1)]
        for i in (0, 1):
            got = json.loads(lukhas("get", f"up:{i}", "--json").stdout)
            twin = json.loads(lukhas("get", f"ref:{i}", "--json").stdout)
            assert [got[k] for k in ("version", "checksum", "doc")] == [
                twin[k] for k in ("version", "checksum", "doc")
            ]
        # Again: each is a duplicate of its first re-drive, never applied twice.
        again = lukhas("dlq", "redrive", "--reason", "UnknownSchemaError", "--yes")
        assert again.stdout.count("duplicate of offset") == 3, again.stdout
        assert json.loads(lukhas("get", "up:0", "--json").stdout)["version"] == 2
        statuses = [e["status"] for e in
                    json.loads(lukhas("history", "up:0", "--json").stdout)["events"]]  # fmt: skip
        assert statuses == ["dead_lettered"] * 2 + ["applied"] * 2 + ["duplicate"] * 2
        # Garbage stays garbage: re-driven, dead-lettered again with its reason (exit 6).
        assert len(dead_letters(lukhas, "--context-id", "junk:2")) == 1
        bad = lukhas("dlq", "redrive", "--context-id", "junk:2", "--yes", check=False)
        assert bad.returncode == 6 and "dead_lettered (BadMagicError" in bad.stdout, bad.stdout
        assert len(dead_letters(lukhas, "--context-id", "junk:2")) == 2
    finally:
        lukhas.env.pop("LUKHAS_SCHEMA_DIR")


def test_dlq_bad_input_is_one_line_and_its_code(lukhas: Lukhas, tmp_path: Path) -> None:
    (tmp_path / "ContextEvent.v1.avsc").write_text('{"type": "record", "name": "X", "fields": []}')
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "ContextEvent.v3.avsc").write_text("{not json")
    cases = [
        (("dlq", "show", "0:99999999"), 3, "no dead letter at 0:99999999"),
        (("dlq", "show", "nope"), 2, "PARTITION:OFFSET"),
        (("dlq", "show", "99:0"), 1, "no partition 99"),
        (("dlq", "list", "--since", "yesterday"), 2, "neither an offset nor a time"),
        (("dlq", "redrive", "--yes", "--dry-run"), 2, "give one"),
        (("dlq", "list", "--bootstrap", "127.0.0.1:1"), 1, "cannot reach Kafka"),
        (("worker", "--bootstrap", "x", "--state-dir", str(tmp_path / "s"), "--schema-dir",
          str(tmp_path)), 1, "differs from the version 1 this package ships"),
        (("worker", "--bootstrap", "x", "--state-dir", str(tmp_path / "s"), "--schema-dir",
          str(tmp_path / "bad")), 1, "not a valid Avro schema"),
    ]  # fmt: skip
    for args, code, text in cases:
        done = lukhas(*args, check=False)
        assert done.returncode == code, (args, done.returncode, done.stderr)
        assert text in done.stderr and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert lukhas("dlq", "list", "--reason", "no such reason at all").stdout == ""


def test_dlq_prune_shows_then_deletes_what_was_dead_lettered_before_a_time(lukhas: Lukhas) -> None:
    letters = dead_letters(lukhas, "--limit", "1000")
    assert letters, "the tests before left dead letters"
    p = int(letters[0]["position"].split(":")[0])
    ours = [d for d in letters if d["position"].startswith(f"{p}:")]
    assert json.loads(lukhas("dlq", "prune", "--before", "2000-01-01", "-p", str(p),
                             "--json").stdout)[0]["deletes"] == 0  # fmt: skip
    shown = lukhas("dlq", "prune", "--before", "2099-01-01T00:00:00Z", "-p", str(p))
    assert f"{len(ours)} would be deleted" in shown.stdout and "add --yes" in shown.stderr
    assert len(dead_letters(lukhas, "-p", str(p))) == len(ours)  # nothing went
    (done,) = json.loads(lukhas("dlq", "prune", "--before", "2099-01-01T00:00:00Z", "-p",
                                str(p), "--yes", "--json").stdout)  # fmt: skip
    assert done["log_start_now"] == done["end"] and done["deletes"] == len(ours)
    assert dead_letters(lukhas, "-p", str(p)) == []
    bad = lukhas("dlq", "prune", "--before", "2099-01-01", "-p", "99", check=False)
    assert bad.returncode == 1 and "no partition 99" in bad.stderr
    assert lukhas("dlq", "prune", check=False).returncode == 2  # --before is required


def test_ls_lists_live_contexts_in_pages(lukhas: Lukhas) -> None:
    """``lukhas ls`` over ``GET /v1/contexts``: id order across the partitions, deleted
    contexts left out, pages that follow on from ``--after``, bad input refused."""
    ids = [f"ls:{i}" for i in range(12)]
    for cid in ids:
        lukhas("put", cid, '{"n": 1}')
    lukhas("delete", "ls:3")
    lukhas("put", "ls:7", '{"n": 2}', "--ttl", "3600")
    live = sorted(cid for cid in ids if cid != "ls:3")
    listed = json.loads(lukhas("ls", "ls:", "--all", "--limit", "4", "--json").stdout)
    assert [c["context_id"] for c in listed["contexts"]] == live
    assert listed["incomplete"] == [] and listed["next_after"] is None
    seven = next(c for c in listed["contexts"] if c["context_id"] == "ls:7")
    assert seven["version"] == 2 and seven["expires_at_ms"] is not None
    assert {c["partition"] for c in listed["contexts"]} == set(range(PARTITIONS))
    # one page of text, and where the next starts
    first = lukhas("ls", "ls:", "--limit", "5")
    lines = first.stdout.splitlines()
    assert [line.split("\t")[0] for line in lines] == live[:5], first.stdout
    assert lines[0] == f"{live[0]}\tversion 1\texpires never"
    assert f"--after '{live[4]}'" in first.stderr
    rest = lukhas("ls", "ls:", "--after", live[4], "--limit", "1000").stdout.splitlines()
    assert [line.split("\t")[0] for line in rest] == live[5:]
    assert lukhas("ls", "ls:1").stdout.split("\n")[0].startswith("ls:1\t")
    assert lukhas("ls", "nothing-here:").stdout == ""
    for args, code, text in [
        (("--limit", "0"), 2, "--limit"),
        (("--limit", "-3"), 2, "--limit"),
        (("x" * 300,), 1, "prefix is longer than a context id"),
    ]:
        done = lukhas("ls", *args, check=False)
        assert done.returncode == code, (args, done.stderr)
        assert text in done.stderr and len(done.stderr.strip().splitlines()) == 1, done.stderr
