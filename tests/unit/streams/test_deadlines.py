"""Adaptive deadlines (``streams.deadlines``) and how the router keeps them
(``streams.routing``): the arithmetic, pure; then the client against fake read APIs that
stall, shed load or answer slowly (this tests the client, not a worker)."""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable, Callable

import orjson
import pytest
import xxhash
from aiohttp import web

from lukhas_context import DeadlineExceededError, DeadlinePolicy, OverloadedError
from lukhas_context.streams.client import ClientConfig, ContextClient
from lukhas_context.streams.deadlines import LatencyWindow, retry_after_of
from lukhas_context.streams.exceptions import ReadError
from lukhas_context.streams.routing import _kind

DOC = {"k": 1}
CHECKSUM = xxhash.xxh3_64_hexdigest(orjson.dumps(DOC, option=orjson.OPT_SORT_KEYS))
ANSWER = {
    "context_id": "c", "version": 3, "doc": DOC, "checksum": CHECKSUM, "offset": 7,
    "partition": 0, "expires_at_ms": None,
}  # fmt: skip


def test_the_window_keeps_the_newest_latencies_and_gives_nearest_rank_quantiles() -> None:
    window = LatencyWindow(4)
    assert window.quantile(0.5) is None
    for latency in (0.4, 0.1, 0.3, 0.2):
        window.add(latency)
    assert window.quantile(0.5) == 0.2
    assert window.quantile(1.0) == 0.4
    assert window.quantile(0.01) == 0.1
    assert window.quantile(0.5, min_samples=5) is None
    window.add(1.0)  # replaces the oldest (0.4)
    assert len(window) == 4
    assert window.quantile(1.0) == 1.0
    assert sorted(window.quantile(q) or 0 for q in (0.25, 0.5, 0.75, 1)) == [0.1, 0.2, 0.3, 1.0]


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf, -1.0])
def test_a_latency_that_is_not_a_duration_is_ignored(bad: float) -> None:
    window = LatencyWindow(8)
    window.add(0.01)
    window.add(bad)
    assert len(window) == 1
    assert window.quantile(1.0) == 0.01


def test_the_allowance_is_the_ceiling_until_trusted_then_a_clamped_multiple() -> None:
    policy = DeadlinePolicy(floor_s=0.1, ceiling_s=5.0, quantile=0.99, factor=4, min_samples=3)
    window = LatencyWindow(policy.window)
    assert policy.allowance_s(None) == 5.0
    assert policy.usual_s(None) == 0.0
    window.add(0.001)
    window.add(0.002)
    assert policy.allowance_s(window) == 5.0  # two answers: nothing learnt yet
    window.add(0.003)
    assert policy.allowance_s(window) == 0.1  # 4 x 3 ms, under the floor
    assert policy.usual_s(window) == 0.002
    for _ in range(10):
        window.add(0.5)
    assert policy.allowance_s(window) == 2.0  # 4 x 500 ms
    for _ in range(15):
        window.add(60.0)
    assert policy.allowance_s(window) == 2.0  # quantiles are computed again every 16
    window.add(60.0)
    assert policy.allowance_s(window) == 5.0  # the ceiling


@pytest.mark.parametrize(
    "field, value",
    [("floor_s", 0), ("floor_s", math.nan), ("ceiling_s", 0.01), ("ceiling_s", math.inf),
     ("quantile", 0), ("quantile", 1.5), ("factor", 0.5), ("factor", math.nan),
     ("min_samples", 0), ("min_samples", 1000), ("window", 0), ("window", 1 << 20)],
)  # fmt: skip
def test_a_policy_out_of_range_names_its_field(field: str, value: float) -> None:
    with pytest.raises(ValueError, match=f"DeadlinePolicy.{field} out of range"):
        DeadlinePolicy(**{field: value})  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "data, expected",
    [({"retry_after": 3}, 3.0), ({"retry_after": 3, "retry_after_s": 9}, 3.0),
     ({"retry_after_s": 2}, 2.0), ({"retry_after_s": 0.5}, 0.5), ({}, 0.2), (None, 0.2),
     ([1], 0.2), ({"retry_after_s": "3"}, 0.2), ({"retry_after_s": True}, 0.2),
     ({"retry_after_s": math.nan}, 0.2), ({"retry_after_s": -5}, 0.0),
     ({"retry_after_s": 1e300}, 60.0)],
)  # fmt: skip
def test_retry_after_is_read_within_bounds_whatever_a_worker_sends(
    data: object, expected: float
) -> None:
    assert retry_after_of(data, 0.2) == expected


def test_requests_are_timed_by_kind_not_by_context() -> None:
    assert _kind("GET", "/v1/contexts/a%2Fb") == "GET /v1/contexts/*"
    assert _kind("GET", "/v1/contexts/x/history") == "GET /v1/contexts/*/history"
    assert _kind("GET", "/v1/contexts") == "GET /v1/contexts"
    assert _kind("GET", "/v1/outcomes/3/99") == "GET /v1/outcomes"
    assert _kind("POST", "/v1/dry-run") == "POST /v1/dry-run"


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


async def _worker(context: Handler) -> tuple[web.AppRunner, str]:
    """A read API whose routing table names itself for the only partition; ``context``
    answers point reads."""
    url: list[str] = []

    async def members(request: web.Request) -> web.Response:
        return web.json_response({"owners": {"0": url[0]}, "partition_count": 1, "members": []})

    app = web.Application()
    app.router.add_get("/v1/members", members)
    app.router.add_get("/v1/contexts/{id}", context)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    url.append(f"http://127.0.0.1:{port}")
    return runner, url[0]


POLICY = DeadlinePolicy(floor_s=0.1, ceiling_s=5.0, factor=4, min_samples=5)


async def test_a_stalled_answer_is_given_up_after_the_learnt_allowance_and_tried_again() -> None:
    """Once the client has seen the worker answer fast, one answer that never comes is
    given up after the allowance (4 x p99, at least 100 ms), not after the 5 s ceiling, and
    the read is tried again and answered within the same call."""
    calls: list[float] = []
    gate = asyncio.Event()

    async def context(request: web.Request) -> web.Response:
        calls.append(time.monotonic())
        if len(calls) == 11:
            await gate.wait()  # stalls; the client gives up first
        return web.json_response(ANSWER)

    runner, url = await _worker(context)
    try:
        async with ContextClient(ClientConfig("unused:9092", url, deadline_policy=POLICY)) as c:
            for _ in range(10):
                await c.get("c", timeout=5)
            started = time.monotonic()
            assert (await c.get("c", timeout=5)).doc == DOC
            elapsed = time.monotonic() - started
    finally:
        gate.set()
        await runner.cleanup()
    assert len(calls) == 12
    assert elapsed < 2.0  # the allowance (0.1 s), the routing reload, a 0.2 s pause


async def test_a_stopped_worker_fails_the_call_at_its_budget_with_a_typed_error() -> None:
    """A worker that never answers: the call ends when its budget (timeout + allowance)
    is spent, not later, with ``DeadlineExceededError`` saying so."""
    gate = asyncio.Event()

    async def context(request: web.Request) -> web.Response:
        await gate.wait()
        return web.json_response(ANSWER)

    runner, url = await _worker(context)
    try:
        policy = DeadlinePolicy(floor_s=0.1, ceiling_s=0.5)
        async with ContextClient(ClientConfig("unused:9092", url, deadline_policy=policy)) as c:
            started = time.monotonic()
            with pytest.raises(DeadlineExceededError) as caught:
                await c.get("c", timeout=1)
            elapsed = time.monotonic() - started
    finally:
        gate.set()
        await runner.cleanup()
    assert caught.value.budget_s == pytest.approx(1.5)
    assert 1.5 <= elapsed < 1.5 * 1.25
    assert "budget of 1.500 s ran out" in str(caught.value)
    assert isinstance(caught.value, ReadError)  # what callers caught before


async def test_a_slow_answer_is_not_given_up_on_forever() -> None:
    """A request that takes longer than the learnt allowance every time (a worker that
    became slow): each attempt of the call gets twice the time of the one before, so it is
    answered within the budget instead of timing out attempt after attempt."""
    calls: list[int] = []

    async def context(request: web.Request) -> web.Response:
        calls.append(1)
        if len(calls) > 10:
            await asyncio.sleep(0.5)
        return web.json_response(ANSWER)

    runner, url = await _worker(context)
    try:
        async with ContextClient(ClientConfig("unused:9092", url, deadline_policy=POLICY)) as c:
            for _ in range(10):
                await c.get("c", timeout=5)
            assert (await c.get("c", timeout=5)).doc == DOC
    finally:
        await runner.cleanup()
    assert 11 < len(calls) <= 15  # 0.1, 0.2, 0.4 s given up on; 0.8 s answered


async def test_a_worker_shedding_load_is_asked_again_after_its_retry_after() -> None:
    calls: list[int] = []

    async def context(request: web.Request) -> web.Response:
        calls.append(1)
        if len(calls) < 3:
            return _overloaded(0.2)
        return web.json_response(ANSWER)

    runner, url = await _worker(context)
    try:
        async with ContextClient(ClientConfig("unused:9092", url)) as client:
            started = time.monotonic()
            assert (await client.get("c", timeout=5)).doc == DOC
            elapsed = time.monotonic() - started
    finally:
        await runner.cleanup()
    assert len(calls) == 3
    assert elapsed >= 0.4


async def test_a_retry_after_past_the_budget_fails_at_once_with_overloaded() -> None:
    async def context(request: web.Request) -> web.Response:
        return _overloaded(30)

    runner, url = await _worker(context)
    try:
        async with ContextClient(ClientConfig("unused:9092", url)) as client:
            started = time.monotonic()
            with pytest.raises(OverloadedError) as caught:
                await client.get("c", timeout=2)
            elapsed = time.monotonic() - started
    finally:
        await runner.cleanup()
    assert caught.value.retry_after_s == 30
    assert "sheds load" in str(caught.value)
    assert elapsed < 2


async def test_a_partition_being_restored_is_asked_again_within_the_callers_time() -> None:
    """A 503 that says "ask again" (the partition is being restored: a failover under way)
    is asked again until the caller's ``timeout``; the read that comes after the restore is
    answered within the same call."""
    calls: list[int] = []

    async def context(request: web.Request) -> web.Response:
        calls.append(1)
        if len(calls) < 4:
            return _restoring()
        return web.json_response(ANSWER)

    runner, url = await _worker(context)
    try:
        async with ContextClient(ClientConfig("unused:9092", url)) as client:
            assert (await client.get("c", timeout=5)).doc == DOC
    finally:
        await runner.cleanup()
    assert len(calls) == 4


async def test_a_restore_longer_than_the_callers_time_is_the_callers_to_read() -> None:
    """Past the caller's ``timeout`` the worker's 503 is returned, and the read says what it
    said, as before: not a deadline or overload error."""

    async def context(request: web.Request) -> web.Response:
        return _restoring()

    runner, url = await _worker(context)
    try:
        async with ContextClient(ClientConfig("unused:9092", url)) as client:
            started = time.monotonic()
            with pytest.raises(ReadError, match="being restored") as caught:
                await client.get("c", timeout=0.5)
            elapsed = time.monotonic() - started
            with pytest.raises(ReadError, match="being restored"):
                await client.get("c", timeout=0)  # no time to ask again: at once
    finally:
        await runner.cleanup()
    assert not isinstance(caught.value, DeadlineExceededError | OverloadedError)
    assert 0.3 <= elapsed < 2


def _restoring() -> web.Response:
    body = {
        "type": "urn:lukhas:problem:partition-not-ready", "title": "Partition not ready",
        "status": 503, "detail": "partition 0 is being restored; ask again",
    }  # fmt: skip
    return web.json_response(body, status=503)


async def test_another_503_is_not_asked_again() -> None:
    """A 503 of no kind the client knows (a proxy's, an old worker's) is the caller's to
    read at once: asking again in a loop could only add load."""
    calls: list[int] = []

    async def context(request: web.Request) -> web.Response:
        calls.append(1)
        body = {"type": "about:blank", "status": 503, "detail": "busy"}
        return web.json_response(body, status=503)

    runner, url = await _worker(context)
    try:
        async with ContextClient(ClientConfig("unused:9092", url)) as client:
            with pytest.raises(ReadError, match="503: busy"):
                await client.get("c", timeout=5)
    finally:
        await runner.cleanup()
    assert len(calls) == 1


async def test_a_worker_asking_for_no_pause_is_not_called_in_a_loop() -> None:
    """``retry_after_s`` 0 from a worker shedding load: the client still pauses between
    tries (a review found a stale read retrying tens of thousands of times a second)."""
    calls: list[int] = []

    async def context(request: web.Request) -> web.Response:
        calls.append(1)
        return _overloaded(0)

    runner, url = await _worker(context)
    try:
        async with ContextClient(ClientConfig("unused:9092", url)) as client:
            started = time.monotonic()
            with pytest.raises(OverloadedError):
                await client.get("c", timeout=1, allow_stale=True)
            elapsed = time.monotonic() - started
    finally:
        await runner.cleanup()
    assert len(calls) <= elapsed / 0.2 + 2  # a pause of 0.2 s between tries, at least


def _overloaded(retry_after: float) -> web.Response:
    body = {
        "type": "urn:lukhas:problem:overloaded", "title": "Overloaded", "status": 503,
        "detail": "too many reads queued", "retry_after": retry_after,
    }  # fmt: skip
    return web.json_response(
        body, status=503, headers={"Retry-After": str(max(1, math.ceil(retry_after)))}
    )


def test_a_client_config_takes_only_policies() -> None:
    from lukhas_context import InvalidConfigError

    with pytest.raises(InvalidConfigError, match="deadline_policy"):
        ClientConfig("b:9092", deadline_policy={"floor_s": 1})  # type: ignore[arg-type]
    with pytest.raises(InvalidConfigError, match="breaker_policy"):
        ClientConfig("b:9092", breaker_policy=3)  # type: ignore[arg-type]
