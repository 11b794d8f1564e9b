"""The read API's checks of what a request asks for, made before anything is waited for or
read: unknown or repeated query parameters, numbers out of range, partitions the WAL does not
have. A worker that has not started folding answers them (no broker is needed)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from lukhas_context.processors.api import ReadApi
from lukhas_context.processors.config import WorkerConfig
from lukhas_context.processors.exceptions import InvalidWorkerConfigError
from lukhas_context.processors.materializer import Materializer

HUGE = "9" * 23


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[Any]:
    """``await api(path)``: (status, JSON body) from a read API whose worker knows the WAL
    has 6 partitions and serves none of them."""
    materializer = Materializer(WorkerConfig(bootstrap="127.0.0.1:1", state_dir=tmp_path))
    materializer.assignment.partition_count = 6
    read_api = ReadApi(materializer)
    await read_api.start("127.0.0.1", 0)
    port = read_api.port
    session = aiohttp.ClientSession()

    async def get(path: str, **headers: str) -> tuple[int, Any]:
        url = f"http://127.0.0.1:{port}{path}"
        timeout = aiohttp.ClientTimeout(total=30)
        async with session.get(url, headers=headers, timeout=timeout) as response:
            return response.status, await response.json(content_type=None)

    yield get
    await session.close()
    await read_api.close()


@pytest.mark.parametrize(
    ("path", "named"),
    [
        ("/v1/changes?from=earliest", "start"),
        ("/v1/contexts/a?after=0:1", "min_offset"),
        ("/v1/outcomes/0/0?wait=1", "timeout"),
        ("/v1/partitions?verbose=1", "no query parameters"),
        ("/v1/members?x=", "no query parameters"),
        ("/v1/contexts/a/history?from=3", "after, limit, min_offset, timeout"),
        ("/healthz?ready", "no query parameters"),
        ("/metrics?format=json", "no query parameters"),
    ],
)
async def test_unknown_query_parameters_are_a_400_naming_the_known_ones(
    api: Any, path: str, named: str
) -> None:
    status, body = await api(path)
    assert status == 400, body
    assert "unknown query parameter" in body["error"] and named in body["error"]


async def test_leading_zeros_are_not_out_of_range(api: Any) -> None:
    status, body = await api(f"/v1/outcomes/99/{'0' * 30}1")
    assert status == 404 and body["no_such"] == "partition", body  # parsed: offset 1


async def test_a_parameter_given_twice_is_a_400(api: Any) -> None:
    status, body = await api("/v1/outcomes/0/0?timeout=1&timeout=2")
    assert status == 400 and "twice" in body["error"]


@pytest.mark.parametrize(
    ("path", "named"),
    [
        (f"/v1/changes?start={HUGE}", "start"),
        (f"/v1/changes?limit={HUGE}", "limit"),
        ("/v1/changes?limit=-1", "limit"),
        ("/v1/changes?idle_timeout=nan", "idle_timeout"),
        ("/v1/changes?idle_timeout=inf", "idle_timeout"),
        ("/v1/changes?deltas=yes", "deltas"),
        (f"/v1/outcomes/0/{HUGE}", "offset"),
        (f"/v1/outcomes/{HUGE}/0", "partition"),
        ("/v1/outcomes/%D9%A3/0", "partition"),  # an Arabic-Indic three: int() would take it
        ("/v1/outcomes/0/1_0", "offset"),
        ("/v1/outcomes/-1/0", "partition"),
        ("/v1/outcomes/0/5?timeout=nan", "timeout"),
        ("/v1/outcomes/0/5?timeout=-5", "timeout"),
        (f"/v1/contexts/a?min_offset=0:1&timeout={HUGE}e400", "timeout"),
        (f"/v1/contexts/a?min_offset=0:{HUGE}", "offset"),
        (f"/v1/contexts/a?min_offset={HUGE}:0", "partition"),
        ("/v1/contexts/a?min_offset=0", "min_offset"),
        ("/v1/contexts/a?min_offset=0:%20%201", "offset"),
        (f"/v1/contexts/a/history?after={HUGE}", "after"),
        ("/v1/contexts/a/history?after=-1", "after"),
        ("/v1/contexts/a/history?limit=10001", "limit"),
        ("/v1/contexts/a/history?limit=0", "limit"),
        ("/v1/contexts/a/history?limit=1e3", "limit"),
        ("/v1/contexts/a/history?min_offset=0:x", "offset"),
    ],
)
async def test_out_of_range_numbers_are_a_400_never_a_500(api: Any, path: str, named: str) -> None:
    status, body = await api(path)
    assert status == 400, (status, body)
    assert body["error"].removeprefix("ValidationError: ").startswith(f"{named} "), body


async def test_a_huge_start_in_last_event_id_is_a_400(api: Any) -> None:
    """The same number through a reconnecting browser's header."""
    status, body = await api("/v1/changes", **{"Last-Event-ID": HUGE})
    assert status == 400 and "2^63-1" in body["error"], body


async def test_well_formed_parameters_pass_the_checks(api: Any) -> None:
    """Every parameter the endpoint takes, well-formed: past the checks, to the broker
    (which this worker cannot reach: 503, not 400)."""
    query = "start=earliest&limit=0&deltas=true&idle_timeout=0.5&prefix=x"
    status, body = await api(f"/v1/changes?{query}")
    assert status == 503, body


@pytest.mark.parametrize(
    "path",
    [
        "/v1/outcomes/99/0",
        "/v1/outcomes/6/0",
        "/v1/contexts/a?min_offset=99:0",
        "/v1/contexts/a/history?min_offset=6:0",
    ],
)
async def test_a_partition_the_wal_does_not_have_is_a_404(api: Any, path: str) -> None:
    status, body = await api(path)
    assert status == 404, (status, body)
    assert body["no_such"] == "partition" and body["partition_count"] == 6
    assert "no partition" in body["error"]


@pytest.mark.parametrize(
    ("path", "said"),
    [
        ("/v1/contexts/a?as_of=yesterday", "as_of: "),
        ("/v1/contexts/a?as_of=0:1,0:2", "named twice"),
        ("/v1/contexts/a?as_of=0:x", "as_of: "),
        ("/v1/contexts/a?as_of=0:1&min_offset=0:1", "give one"),
        ("/v1/contexts/a?as_of=0:1&timeout=nan", "timeout"),
        ("/v1/contexts/a?as_of=1969-12-31T23:59:59Z", "before 1970"),
        ("/v1/contexts/a?as_of=ms:99999999999999999999", "out of range"),
    ],
)
async def test_a_point_in_time_that_does_not_parse_is_a_400(api: Any, path: str, said: str) -> None:
    status, body = await api(path)
    assert status == 400 and said in body["error"], (status, body)


async def test_a_read_waits_for_the_store_to_show_the_release_the_fold_made(
    tmp_path: Path,
) -> None:
    """The fold's ``held`` is its state in memory, ahead of the store while the round that
    released a transaction is being published: the read of a context the decision just
    released waits until the store has committed that round (``folded_to``), or it would
    read the document from before the transaction."""
    import asyncio
    from types import SimpleNamespace

    from lukhas_context.processors.twophase import PreparedTx

    store = SimpleNamespace(next_offset=5)
    prepared = PreparedTx(b"t" * 16, 3, 0, (0, 1), True, "", b"")
    folder = SimpleNamespace(held={b"k": prepared.tx_id}, prepared={prepared.tx_id: prepared},
                             folded_to=5, store=store)  # fmt: skip
    # The method alone, on a stand-in for the worker: no store, no broker.
    read_api: Any = SimpleNamespace(m=SimpleNamespace(folder_for=lambda p: folder))
    read_api._decided = ReadApi._decided.__get__(read_api)
    assert not await read_api._decided(0, b"k", 4, 0.05)  # held by the one prepared at 3
    assert await read_api._decided(0, b"k", 2, 0.05)  # prepared after the read's position
    # The fold folds the decision at 7 and releases the key; the round is not committed.
    folder.held, folder.prepared, folder.folded_to = {}, {}, 8
    waiting = asyncio.ensure_future(read_api._decided(0, b"k", 4, 5))
    await asyncio.sleep(0.05)
    assert not waiting.done()
    store.next_offset = 8  # committed
    assert await asyncio.wait_for(waiting, 5)
    # A read that looks while the next round is folding waits for that round too: it
    # cannot tell what the round in memory released.
    folder.folded_to = 9
    assert not await read_api._decided(0, b"k", 4, 0.05)
    store.next_offset = 9
    assert await read_api._decided(0, b"k", 4, 0.05)


def test_the_change_compression_is_one_of_three(tmp_path: Path) -> None:
    for name in ("none", "lz4", "zstd"):
        WorkerConfig(bootstrap="127.0.0.1:1", state_dir=tmp_path, change_compression=name)
    with pytest.raises(InvalidWorkerConfigError, match="none, lz4 or zstd"):
        WorkerConfig(bootstrap="127.0.0.1:1", state_dir=tmp_path, change_compression="gzip")


def test_a_coalesced_change_stream_needs_exactly_once(tmp_path: Path) -> None:
    WorkerConfig(bootstrap="127.0.0.1:1", state_dir=tmp_path, coalesce_changes=True)
    with pytest.raises(InvalidWorkerConfigError, match="coalesce_changes needs exactly_once"):
        WorkerConfig(bootstrap="127.0.0.1:1", state_dir=tmp_path, coalesce_changes=True,
                     exactly_once=False)  # fmt: skip


async def test_a_starting_worker_is_alive_and_not_ready(api: Any) -> None:
    """A liveness probe must not kill a worker that is starting or restoring; a readiness
    probe keeps traffic off it and says why."""
    assert await api("/livez") == (200, {"status": "alive"})
    status, body = await api("/readyz")
    assert status == 503
    assert body["status"] == "not_ready" and body["reasons"] == ["starting"]
    assert body["max_lag"] == 10_000 and body["partitions"] == {}
    status, body = await api("/readyz?max_lag=0")
    assert status == 503 and body["max_lag"] == 0
    for bad in ("/readyz?max_lag=-1", f"/readyz?max_lag={HUGE}", "/readyz?max_lag=x",
                "/readyz?lag=1", "/livez?x=1", "/readyz?max_lag=1&max_lag=2"):  # fmt: skip
        status, body = await api(bad)
        assert status == 400, (bad, body)


async def test_readiness_names_each_partition_behind_or_unknown(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The lag rule alone, on a worker whose stores and fetcher positions are stand-ins."""

    class Store:
        def __init__(self, next_offset: int) -> None:
            self.next_offset = next_offset

    materializer = Materializer(WorkerConfig(bootstrap="127.0.0.1:1", state_dir=tmp_path))
    materializer.assignment.partition_count = 3
    materializer.running = True
    stores = {0: Store(100), 1: Store(50), 2: Store(7)}
    ends = {0: 100, 1: 20_050, 2: None}
    monkeypatch.setattr(Materializer, "stores", property(lambda self: stores))
    monkeypatch.setattr(Materializer, "highwater", lambda self, p: ends[p])
    read_api = ReadApi(materializer)
    await read_api.start("127.0.0.1", 0)
    try:
        async with aiohttp.ClientSession() as session:
            url = f"http://127.0.0.1:{read_api.port}/readyz"
            async with session.get(url) as answer:
                status, body = answer.status, await answer.json()
            assert status == 503
            assert body["reasons"] == [
                "partition 1 is 20000 records behind (max_lag 10000)",
                "partition 2: the WAL's end is not known yet",
            ]
            assert body["partitions"]["0"] == {"next_offset": 100, "end": 100, "lag": 0}
            ends[2] = 7
            async with session.get(url, params={"max_lag": "20000"}) as answer:
                assert answer.status == 200, await answer.text()
    finally:
        await read_api.close()
