"""The operators' console (``/console``) in a real browser: Debian's chromium driven by
Playwright, against a real worker and broker. Contexts are found by prefix, opened, and their
history read; a document holding markup is shown as text and runs nothing; the cluster view
shows the worker's partitions; a phone's width and the keyboard alone are enough. Each page's
screenshot is saved under ``build/console/`` (a CI artifact).

Chromium comes from apt (``.ci/run`` installs it), never from ``playwright install`` (which
downloads a browser from the web); ``LUKHAS_CHROMIUM`` names another binary."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from lukhas_context.processors.console import CSP
from lukhas_context.processors.fanout import FORWARDED_HEADER

from .conftest import serving_all, v2_event, v2_writer_schema

pytestmark = pytest.mark.integration

SHOTS = Path(__file__).resolve().parents[2] / "build" / "console"
EVIL = {
    "note": "<script>alert(1)</script>",
    "img": "<img src=x onerror='window.pwned=1'>",
    "</pre><b>": "bold?",
}
DLQ_WRITE_TOKEN = "console-dlq-write-0123456789"
PHONE = {"width": 375, "height": 740}


def chromium() -> str:
    """The browser to drive; a test fails (not skips) without one, saying how to get it."""
    path = os.environ.get("LUKHAS_CHROMIUM") or shutil.which("chromium")
    if path is None:
        pytest.fail(
            "the console's browser tests need Debian's chromium: `apt-get install -y chromium` "
            "(.ci/run does), or LUKHAS_CHROMIUM=/path/to/chromium; not `playwright install`"
        )
    return path


@pytest.fixture
async def browser() -> AsyncIterator[Any]:
    try:
        from playwright.async_api import async_playwright, expect
    except ImportError:
        pytest.fail("the console's browser tests need playwright: pip install -e '.[dev]'")
    # What the page waits on is the worker and the broker, on a loaded 2-core CI machine:
    # not Playwright's 5 s.
    expect.set_options(timeout=30_000)
    async with async_playwright() as driver:
        launched = await driver.chromium.launch(executable_path=chromium())
        try:
            yield launched
        finally:
            await launched.close()


async def open_page(browser: Any, url: str, **options: Any) -> tuple[Any, list[str]]:
    """A page at ``url``; the list collects every dialog opened and every script error (a
    Content-Security-Policy violation among them): a test expects it empty."""
    page = await browser.new_page(**options)
    page.set_default_timeout(30_000)
    trouble: list[str] = []

    async def dialog(d: Any) -> None:
        trouble.append(f"dialog: {d.message}")
        await d.dismiss()

    page.on("dialog", dialog)
    page.on("pageerror", lambda e: trouble.append(f"page error: {e}"))
    page.on("console", lambda m: m.type == "error" and trouble.append(f"console: {m.text}"))
    await page.goto(url)
    return page, trouble


async def load(make_client: Any, prefix: str, *urls: str) -> None:
    """Puts through the first of ``urls``, and every tenth one's point read through each of
    them, until cancelled (the Metrics view's tests plot it)."""
    async with make_client(urls[0]) as client, aiohttp.ClientSession() as http:
        n = 0
        while True:
            name = f"{prefix}:{n % 20}"
            receipt = await client.put(name, {"n": n})
            n += 1
            if n % 10 == 0:
                await receipt.outcome(timeout=30)
                for url in urls:
                    async with http.get(f"{url}/v1/contexts/{name}") as answer:
                        assert answer.status == 200
                await asyncio.sleep(0.05)


async def shoot(page: Any, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    await page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


async def test_the_console_is_served_with_headers_that_allow_only_its_script(
    start_worker: Any,
) -> None:
    worker = await start_worker(api_token="console-token-0123456789")
    async with aiohttp.ClientSession() as http:
        for path, kind in (
            ("/console", "text/html"),
            ("/console/console.js", "text/javascript"),
            ("/console/console.css", "text/css"),
            ("/console/icon.svg", "image/svg+xml"),
        ):
            async with http.get(worker.url + path) as answer:  # no token: no data in them
                assert answer.status == 200, path
                assert answer.content_type == kind
                assert answer.headers["Content-Security-Policy"] == CSP
                assert answer.headers["X-Content-Type-Options"] == "nosniff"
                assert answer.headers["X-Frame-Options"] == "DENY"
        async with http.get(worker.url + "/console/../v1/members") as answer:
            assert answer.status == 401  # normalised to /v1/members: still guarded
        async with http.get(worker.url + "/console/secrets.txt") as answer:
            assert answer.status == 404
        async with http.get(worker.url + "/v1/cluster") as answer:
            assert answer.status == 401
    assert "script-src 'self'" in CSP and "unsafe-inline" not in CSP
    assert "frame-ancestors 'none'" in CSP


async def test_find_a_context_by_prefix_open_it_and_read_its_history(
    start_worker: Any, make_client: Any, browser: Any
) -> None:
    worker = await start_worker()
    async with make_client(worker.url) as client:
        await client.put("console:a", {"n": 1})
        await client.put("console:a", {"n": 2})
        late = await client.put("console:a", {"n": 99}, expected_version=1)  # a conflict
        await client.put("console:b", {"n": 1})
        evil = await client.put("console:evil", EVIL)
        await client.put("other:z", {"n": 1})
        for receipt in (late, evil):
            await receipt.outcome(timeout=30)
    page, trouble = await open_page(browser, f"{worker.url}/console#/contexts")
    await page.fill("#prefix", "console:")
    await page.press("#prefix", "Enter")
    links = page.locator("#results a")
    await links.first.wait_for()
    assert await links.all_text_contents() == ["console:a", "console:b", "console:evil"]
    await shoot(page, "contexts")

    await page.click("text=console:a")
    await page.locator("#document").wait_for()
    assert '"n": 2' in await page.text_content("#document")
    facts = await page.text_content("dl.facts")
    assert "Version2" in facts.replace(" ", "")
    rows = page.locator("#history tbody tr")
    await rows.nth(2).wait_for()
    outcomes = [await rows.nth(i).locator("td").nth(1).text_content() for i in range(3)]
    assert outcomes == ["applied", "applied", "conflict"]
    assert "expected version 1" in (await rows.nth(2).text_content() or "")
    await shoot(page, "context")

    await page.goto(f"{worker.url}/console#/context/console%3Aevil")
    await page.locator("#document").wait_for()
    shown = await page.text_content("#document")
    for key, value in EVIL.items():
        assert key in shown and value in shown  # as text, as written
    assert await page.locator("#document *").count() == 0  # no element made of it
    assert await page.evaluate("window.pwned") is None
    assert await page.locator("script").count() == 1  # the console's own
    await shoot(page, "context-markup")
    assert trouble == []


async def test_the_cluster_view_shows_the_workers_partitions_live(
    start_worker: Any, make_client: Any, browser: Any
) -> None:
    worker = await start_worker()
    page, trouble = await open_page(browser, f"{worker.url}/console")
    summary = page.locator("#cluster-summary")
    await summary.wait_for()
    from playwright.async_api import expect  # (the page's CSP forbids wait_for_function's eval)

    rows = page.locator("#cluster .scroll").nth(1).locator("tbody tr")
    await expect(rows).to_have_count(3)
    await expect(summary).not_to_contain_text("restoring")
    await expect(summary).to_contain_text("1 worker(s), 3 partition(s)")
    for i in range(3):
        assert worker.url in (await rows.nth(i).text_content() or "")
    # A write moves a partition's next offset, and the view shows it without a reload.
    async with make_client(worker.url) as client:
        receipt = await client.put("cluster:a", {"n": 1})
        await receipt.outcome(timeout=30)
    next_offset = rows.nth(receipt.partition).locator("td").nth(2)
    await expect(next_offset).to_have_text(str(receipt.offset + 1), timeout=15000)
    await shoot(page, "cluster")
    assert trouble == []


async def test_a_phone_width_and_the_keyboard_alone_reach_a_context(
    start_worker: Any, make_client: Any, browser: Any
) -> None:
    worker = await start_worker()
    async with make_client(worker.url) as client:
        receipt = await client.put("phone:one", {"text": "a long line " * 20})
        await receipt.outcome(timeout=30)
    page, trouble = await open_page(browser, f"{worker.url}/console#/contexts", viewport=PHONE)

    async def tab_to(selector: str, presses: int = 15) -> None:
        for _ in range(presses):
            await page.keyboard.press("Tab")
            if await page.evaluate(f"document.activeElement.matches({selector!r})"):
                return
        raise AssertionError(f"Tab never reached {selector}")

    await tab_to("#prefix")
    await page.keyboard.type("phone:")
    await page.keyboard.press("Enter")
    await page.locator("#results a").first.wait_for()
    await shoot(page, "phone-contexts")
    await tab_to("#results a")
    await page.keyboard.press("Enter")
    await page.locator("#document").wait_for()
    assert await page.text_content("#context-id") == "phone:one"
    # The view's heading has the focus after the navigation, and nothing is wider than the phone.
    assert await page.evaluate("document.activeElement.tagName") == "H1"
    assert await page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]
    await shoot(page, "phone-context")
    await page.goto(f"{worker.url}/console#/cluster")
    await page.locator("#cluster-summary").wait_for()
    assert await page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]
    await shoot(page, "phone-cluster")
    assert trouble == []


async def test_a_worker_that_does_not_answer_is_shown_not_a_failure(
    start_worker: Any, make_client: Any, browser: Any, tmp_path: Path
) -> None:
    from playwright.async_api import expect

    a = await start_worker(tmp_path / "a")
    b = await start_worker(tmp_path / "b")
    deadline = asyncio.get_running_loop().time() + 90
    async with aiohttp.ClientSession() as http:
        while True:  # both own partitions, in both tables
            tables = []
            for url in (a.url, b.url):
                async with http.get(f"{url}/v1/members") as answer:
                    tables.append((await answer.json())["owners"])
            if all(len(t) == 3 and set(t.values()) == {a.url, b.url} for t in tables):
                break
            assert asyncio.get_running_loop().time() < deadline, tables
            await asyncio.sleep(0.2)
    gone = sorted(int(p) for p, url in tables[0].items() if url == b.url)
    await b.api.close()  # B's API is down; B stays in the group and keeps its partitions

    page, trouble = await open_page(browser, f"{a.url}/console")
    summary = page.locator("#cluster-summary")
    await expect(summary).to_contain_text("1 not answering", timeout=15000)
    workers = page.locator("#cluster .scroll").nth(0).locator("tbody tr")
    await expect(workers.filter(has_text=b.url)).to_contain_text("unreachable")
    partitions = page.locator("#cluster .scroll").nth(1).locator("tbody tr")
    for p in gone:
        await expect(partitions.nth(p)).to_contain_text(b.url)
        await expect(partitions.nth(p)).to_contain_text("unknown")
    await shoot(page, "cluster-worker-down")

    await page.goto(f"{a.url}/console#/contexts?prefix=")
    warning = page.locator("#results .warn")
    await expect(warning).to_contain_text(
        "Partitions " + ", ".join(map(str, gone)) + " did not answer"
    )
    await shoot(page, "contexts-worker-down")
    assert trouble == []


async def test_a_change_arrives_live_and_a_pause_misses_none(
    start_worker: Any, make_client: Any, browser: Any
) -> None:
    from playwright.async_api import expect

    worker = await start_worker()
    page, trouble = await open_page(browser, f"{worker.url}/console#/changes?prefix=live:")
    state = page.locator("#stream-state")
    await expect(state).to_have_text("live", timeout=30000)
    rows = page.locator("#changes tr")
    ids = rows.locator("td:nth-child(2)")
    async with make_client(worker.url) as client:
        await client.put("other:x", {"n": 0})  # another prefix: not shown
        await client.put("live:a", {"note": "<script>alert(1)</script>"})
        await expect(ids).to_have_text(["live:a"], timeout=30000)
        assert "<script>alert(1)</script>" in (await rows.first.text_content() or "")
        await shoot(page, "changes")

        await page.click("#pause")
        await expect(state).to_contain_text("paused")
        for n in (2, 3):  # one context: one partition, so one order
            receipt = await client.put("live:a", {"n": n})
        await receipt.outcome(timeout=30)
        await asyncio.sleep(0.5)
        await expect(ids).to_have_text(["live:a"])  # nothing arrives while paused
        await page.click("#pause")
        # Resumed from the last id: the changes made while paused arrive, each once.
        versions = rows.locator("td:nth-child(4)")
        await expect(versions).to_have_text(["3", "2", "1"], timeout=30000)
        await expect(state).to_contain_text("resumed")
        await client.put("live:d", {"n": 1})
        await expect(ids).to_have_text(["live:d", "live:a", "live:a", "live:a"], timeout=30000)
        # The worker ends the stream (as a restart would): the page reconnects from the last
        # id, and a change made meanwhile arrives once.
        for watcher in list(worker.api._streams):
            await watcher.close()
        await expect(state).to_contain_text("reconnecting")
        await client.put("live:d", {"n": 2})
        await expect(ids).to_have_text(["live:d", "live:d", "live:a", "live:a", "live:a"])
        await expect(state).to_contain_text("resumed")
    await shoot(page, "changes-resumed")
    assert await page.evaluate("window.pwned") is None
    assert trouble == []


async def test_with_a_token_the_console_asks_for_it_and_then_reads(
    start_worker: Any, make_client: Any, browser: Any
) -> None:
    from playwright.async_api import expect

    token = "console-token-0123456789"
    worker = await start_worker(api_token=token)
    page, trouble = await open_page(browser, f"{worker.url}/console")
    await expect(page.locator("#status")).to_contain_text("enter the API token")
    await shoot(page, "token-needed")
    trouble.clear()  # the browser logs the 401 it was answered: that is the point here
    await page.fill("#token", token)
    await page.press("#token", "Enter")
    await expect(page.locator("#cluster-summary")).to_contain_text("3 partition(s)")
    await expect(page.locator("#token-state")).to_have_text("token set (this tab only)")
    assert await page.input_value("#token") == ""  # not left in the field
    await page.goto(f"{worker.url}/console#/changes?prefix=tok:")
    await expect(page.locator("#stream-state")).to_have_text("live", timeout=30000)
    async with make_client(worker.url) as client:
        await client.put("tok:a", {"n": 1})
    # make_client has no token; the write goes to Kafka, the stream needs the page's token
    await expect(page.locator("#changes tr")).to_have_count(1, timeout=30000)
    assert trouble == []


async def test_the_metrics_view_plots_fold_rate_read_latency_and_memory(
    start_worker: Any, make_client: Any, browser: Any
) -> None:
    from playwright.async_api import expect

    budget = 512 * 1024 * 1024
    worker = await start_worker(memory_budget_bytes=budget)
    page, trouble = await open_page(browser, f"{worker.url}/console#/metrics")
    await expect(page.locator("#memory figcaption")).to_contain_text("512.0 MiB")

    task = asyncio.create_task(load(make_client, "m", worker.url))
    try:
        positive = re.compile(r"^(?:[1-9]\d*\.\d|0\.[1-9])$")
        await expect(page.locator("#fold-rate .now")).to_have_text(positive, timeout=30000)
        two_points = re.compile(r"^\S+ \S+")  # a line, not only the first value
        line = page.locator("#fold-rate polyline")
        await expect(line).to_have_attribute("points", two_points, timeout=30000)
        await expect(page.locator("#read-latency .now")).to_have_text(
            re.compile(r"^\d+\.\d\d$"), timeout=30000
        )
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    for plot in ("#fold-rate", "#read-latency", "#memory"):
        await expect(page.locator(f"{plot} polyline")).to_have_count(1)
    await expect(page.locator("#memory line")).to_have_count(1)  # the budget
    await shoot(page, "metrics")
    assert trouble == []


async def test_the_metrics_view_says_when_a_worker_has_no_memory_budget(
    start_worker: Any, browser: Any
) -> None:
    from playwright.async_api import expect

    worker = await start_worker()
    page, trouble = await open_page(browser, f"{worker.url}/console#/metrics")
    await expect(page.locator("#memory")).to_contain_text("no memory budget")
    await expect(page.locator("#fold-rate .now")).to_have_text("0.0", timeout=15000)
    assert trouble == []


async def test_a_checkpoint_taken_is_listed_with_its_manifests(
    start_worker: Any, make_client: Any, browser: Any
) -> None:
    from playwright.async_api import expect

    worker = await start_worker()
    page, trouble = await open_page(browser, f"{worker.url}/console#/checkpoints")
    await expect(page.locator("#no-checkpoints")).to_be_visible()
    async with make_client(worker.url) as client:
        await client.put("ck:a", {"n": 1})
        request = await client.checkpoint("ck-console-1")
        manifests = await client.wait_checkpoint(request, timeout=60)
    await page.click("#refresh")
    section = page.locator("section.checkpoint", has_text="ck-console-1")
    rows = section.locator("tbody tr")
    await expect(rows).to_have_count(3)
    for m in manifests:
        row = rows.nth(m["partition"])
        await expect(row.locator("td").nth(1)).to_have_text(str(m["next_offset"]))
        await expect(row.locator("td").nth(4)).to_have_text(m["digest"])
        await expect(row.locator("td").nth(5)).to_have_text("single")  # one worker
        await expect(row.locator("td").nth(6)).to_have_text(worker.url)
    await shoot(page, "checkpoints")
    assert trouble == []


async def test_a_checkpoint_is_started_only_after_confirmation_and_with_the_write_token(
    start_worker: Any, browser: Any
) -> None:
    from playwright.async_api import expect

    write = "console-write-token-0123456789"
    worker = await start_worker(api_write_token=write)
    await serving_all(worker)  # (before, the page says the worker has no partitions yet)
    page, trouble = await open_page(browser, f"{worker.url}/console#/checkpoints")
    await expect(page.locator("#no-checkpoints")).to_be_visible()
    # Cancel: nothing is appended.
    await page.click("#start-checkpoint")
    dialog = page.locator("#confirm-dialog")
    await expect(dialog).to_be_visible()
    await expect(dialog).to_contain_text("each of the 3 WAL partitions")
    assert await page.evaluate("document.activeElement.id") == "cancel"
    await shoot(page, "checkpoint-confirm")
    await page.keyboard.press("Enter")  # the focused Cancel
    await expect(dialog).to_be_hidden()
    # Confirmed without the write token: refused, and the page says why.
    await page.fill("#checkpoint-id", "ck-refused")
    await page.click("#start-checkpoint")
    await page.click("#confirm")
    await expect(page.locator("#status")).to_contain_text("401")
    trouble.clear()  # the browser logs the 401 it was answered
    # With it: started, then listed once the worker took it.
    await page.fill("#token", write)
    await page.press("#token", "Enter")
    await page.fill("#checkpoint-id", "ck-from-console")
    await page.click("#start-checkpoint")
    await expect(dialog).to_contain_text("checkpoint \u201cck-from-console\u201d")
    await page.click("#confirm")
    await expect(page.locator("#status")).to_contain_text("Checkpoint ck-from-console started")
    rows = page.locator("section.checkpoint", has_text="ck-from-console").locator("tbody tr")
    await expect(rows).to_have_count(3, timeout=30000)
    await shoot(page, "checkpoint-started")
    url = f"{worker.url}/v1/checkpoints"
    async with aiohttp.ClientSession() as http, http.get(url) as answer:
        listed = {c["checkpoint_id"] for c in (await answer.json())["checkpoints"]}
    assert "ck-from-console" in listed and "ck-refused" not in listed
    assert trouble == []


async def test_without_a_write_token_the_console_and_the_api_are_read_only(
    start_worker: Any, browser: Any
) -> None:
    from playwright.async_api import expect

    worker = await start_worker()
    page, trouble = await open_page(browser, f"{worker.url}/console#/checkpoints")
    await expect(page.locator("#read-only")).to_contain_text("Read-only")
    assert await page.locator("#start-checkpoint").count() == 0
    url = f"{worker.url}/v1/checkpoints"
    async with aiohttp.ClientSession() as http, http.post(url, json={}) as answer:
        assert answer.status == 403
        assert "read-only" in (await answer.json())["detail"]
    assert trouble == []


async def test_the_write_token_guards_writes_and_reads_too(start_worker: Any) -> None:
    read, write = "console-read-token-0123456789", "console-write-token-0123456789"
    worker = await start_worker(api_token=read, api_write_token=write)
    async with aiohttp.ClientSession() as http:
        post = f"{worker.url}/v1/checkpoints"
        for headers, status in (({}, 401), ({"Authorization": f"Bearer {read}"}, 401)):
            async with http.post(post, json={}, headers=headers) as answer:
                assert answer.status == status
        async with http.post(post, data=b"[1]", headers={"Authorization": f"Bearer {write}"}) as a:
            assert a.status == 400
        async with http.post(
            post, json={"checkpoint_id": "../x"}, headers={"Authorization": f"Bearer {write}"}
        ) as answer:
            assert answer.status == 400
        for token in (read, write):
            async with http.get(
                f"{worker.url}/v1/checkpoints", headers={"Authorization": f"Bearer {token}"}
            ) as answer:
                assert answer.status == 200
                assert (await answer.json())["writable"] is True


async def test_a_partition_still_restoring_is_shown_not_a_failure(
    start_worker: Any, browser: Any
) -> None:
    from playwright.async_api import expect

    worker = await start_worker()
    # Partition 1's store opens only when the test lets it (the run task has not started
    # yet: nothing was awaited since the worker was started).
    opener = worker.materializer.opener
    real = opener.open
    release = asyncio.Event()

    async def held(partition: int, watermarks: Any = None) -> Any:
        if partition == 1:
            await release.wait()
        return await real(partition, watermarks)

    opener.open = held  # type: ignore[method-assign]
    try:
        page, trouble = await open_page(browser, f"{worker.url}/console")
        summary = page.locator("#cluster-summary")
        await expect(summary).to_contain_text("1 restoring", timeout=30000)
        partitions = page.locator("#cluster .scroll").nth(1).locator("tbody tr")
        await expect(partitions.nth(1)).to_contain_text("restoring on " + worker.url)
        worker_row = page.locator("#cluster .scroll").nth(0).locator("tbody tr").first
        await expect(worker_row.locator("td").nth(2)).to_have_text("0, 2")  # serves
        await expect(worker_row.locator("td").nth(3)).to_have_text("1")  # restoring
        await shoot(page, "cluster-restoring")
        await page.goto(f"{worker.url}/console#/contexts?prefix=")
        await expect(page.locator("#results .warn")).to_contain_text("Partitions 1 did not")
    finally:
        release.set()
    await page.goto(f"{worker.url}/console#/cluster")
    await expect(summary).not_to_contain_text("restoring", timeout=30000)
    await expect(partitions.nth(1).locator("td").nth(2)).to_have_text("0")  # open, folding
    assert trouble == []


async def test_every_view_fits_a_phone_and_a_checkpoint_starts_from_the_keyboard(
    start_worker: Any, browser: Any
) -> None:
    from playwright.async_api import expect

    write = "console-write-token-0123456789"
    worker = await start_worker(api_write_token=write, memory_budget_bytes=512 * 1024 * 1024)
    await serving_all(worker)
    page, trouble = await open_page(browser, f"{worker.url}/console", viewport=PHONE)
    for view, ready in (
        ("changes?prefix=x", "#stream-state"),
        ("metrics", "#memory"),
        ("dead-letters", "#no-dead-letters"),
        ("checkpoints", "#start-checkpoint"),  # last: the keyboard's part starts here
    ):
        await page.goto(f"{worker.url}/console#/{view}")
        await page.locator(ready).wait_for()
        assert await page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]
        await shoot(page, f"phone-{view.split('?')[0]}")

    async def tab_to(selector: str, back: bool = False) -> None:
        for _ in range(20):
            await page.keyboard.press("Shift+Tab" if back else "Tab")
            if await page.evaluate(f"document.activeElement.matches({selector!r})"):
                return
        raise AssertionError(f"Tab never reached {selector}")

    await tab_to("#token")
    await page.keyboard.type(write)
    await page.keyboard.press("Enter")
    await tab_to("#checkpoint-id")
    await page.keyboard.type("ck-keyboard")
    await page.keyboard.press("Tab")  # to Start a checkpoint...
    await page.keyboard.press("Enter")
    await expect(page.locator("#confirm-dialog")).to_be_visible()
    await tab_to("#confirm", back=True)  # from Cancel, the focused one
    await page.keyboard.press("Enter")
    rows = page.locator("section.checkpoint", has_text="ck-keyboard").locator("tbody tr")
    await expect(rows).to_have_count(3, timeout=30000)
    assert trouble == []


async def test_a_garbage_record_is_dead_lettered_and_a_fixed_one_re_driven(
    start_worker: Any, cluster: Any, topics: Any, browser: Any, tmp_path: Path
) -> None:
    """A garbage record and an event of a schema the worker does not know yet are
    dead-lettered. The console lists both with their reasons, decodes one, and dry-runs it
    (it would be dead-lettered again; a read-only worker offers no re-drive). The fix: the
    worker is upgraded to know the schema. Then the dry run says "applied", a cancelled
    re-drive appends nothing, and a confirmed one folds the event."""
    from aiokafka import AIOKafkaProducer
    from playwright.async_api import expect

    v2 = v2_writer_schema(tmp_path / "schemas")
    producer = AIOKafkaProducer(bootstrap_servers=cluster.bootstrap)
    await producer.start()
    try:
        await producer.send_and_wait(topics.events, b"\x00<b>junk</b>", key=b"junk:<i>1</i>")
        await producer.send_and_wait(
            topics.events, v2_event(v2, "dl:fixed", '{"note": "<script>alert(1)</script>"}'),
            key=b"dl:fixed",
        )  # fmt: skip
    finally:
        await producer.stop()
    worker = await start_worker()
    await serving_all(worker)
    page, trouble = await open_page(browser, f"{worker.url}/console#/dead-letters")
    rows = page.locator("#dead-letters tbody tr")
    for _ in range(30):  # the fold dead-letters them as it reads them
        await page.goto(f"{worker.url}/console#/cluster")
        await page.goto(f"{worker.url}/console#/dead-letters")
        await page.locator("#dead-letters p, #dead-letters table").first.wait_for()
        if await rows.count() == 2:
            break
        await asyncio.sleep(1)
    await expect(rows).to_have_count(2)
    junk = rows.filter(has_text="junk:<i>1</i>")  # the key as text, not markup
    await expect(junk).to_contain_text("BadMagicError")
    await expect(rows.filter(has_text="dl:fixed")).to_contain_text("UnknownSchemaError")
    fixed_position = await rows.filter(has_text="dl:fixed").locator("a").inner_text()
    junk_position = await junk.locator("a").inner_text()
    await shoot(page, "dead-letters")
    # The filters: by reason, by partition.
    await page.fill("#dlq-reason", "unknownschema")
    await page.press("#dlq-reason", "Enter")
    await expect(rows).to_have_count(1)
    await expect(rows).to_contain_text("dl:fixed")
    await page.fill("#dlq-reason", "")
    fixed_partition = fixed_position.split(":")[0]
    await page.fill("#dlq-partition", fixed_partition)
    await page.press("#dlq-partition", "Enter")
    await expect(page.locator("#dead-letters tbody tr a")).to_have_text(
        [p for p in (junk_position, fixed_position) if p.split(":")[0] == fixed_partition]
    )

    # The garbage, opened: it does not decode, and would be dead-lettered again.
    await page.goto(f"{worker.url}/console#/dead-letters")
    await junk.locator("a").click()
    await expect(page.locator("#undecodable")).to_contain_text("BadMagicError")
    await expect(page.locator("#letter")).to_contain_text("junk:<i>1</i>")
    await expect(page.locator("#read-only")).to_contain_text("Read-only")
    await page.click("#dry-run")
    await expect(page.locator("#dry-run-result")).to_contain_text("dead_lettered")
    await expect(page.locator("#redrive-button")).to_be_disabled()
    await shoot(page, "dead-letter-garbage")

    # The fix: the worker now reads the newer schema, and takes writes with its token.
    await worker.stop()
    worker = await start_worker(schema_dir=tmp_path / "schemas", api_write_token=DLQ_WRITE_TOKEN)
    await serving_all(worker)
    await page.goto(f"{worker.url}/console#/dead-letter/{fixed_position}")
    await page.fill("#token", DLQ_WRITE_TOKEN)
    await page.press("#token", "Enter")
    decoded = page.locator("#decoded")
    await expect(decoded).to_contain_text('"note": "<script>alert(1)</script>"')
    assert await page.evaluate(
        "window.pwned === undefined && !document.querySelector('#decoded *')"
    )
    await page.click("#dry-run")
    await expect(page.locator("#dry-run-result")).to_contain_text("applied")
    # Cancelled: nothing sent.
    redrives: list[str] = []
    page.on("request", lambda r: r.url.endswith("/redrive") and redrives.append(r.method))
    await page.click("#redrive-button")
    dialog = page.locator("#confirm-dialog")
    await expect(dialog).to_contain_text("original")
    await expect(dialog).to_contain_text("would: applied")
    assert await page.evaluate("document.activeElement.id") == "cancel"
    await shoot(page, "dead-letter-confirm")
    await page.keyboard.press("Enter")
    await expect(dialog).to_be_hidden()
    assert redrives == []
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{worker.url}/v1/contexts/dl:fixed") as answer:
            assert answer.status == 404
        # Confirmed: appended, folded, readable.
        await page.click("#redrive-button")
        await page.click("#confirm")
        result = page.locator("#redrive-result")
        await expect(result).to_contain_text("the fold: applied (version 1)")
        assert redrives == ["POST"]
        await shoot(page, "dead-letter-redriven")
        async with http.get(f"{worker.url}/v1/contexts/dl:fixed") as answer:
            assert answer.status == 200
            assert (await answer.json())["doc"] == {"note": "<script>alert(1)</script>"}
    await result.locator("a").click()
    await expect(page.locator("#document")).to_contain_text("<script>alert(1)</script>")
    assert trouble == []


async def test_a_context_whose_id_has_url_characters_is_found_and_opened(
    start_worker: Any, make_client: Any, browser: Any
) -> None:
    """Ids may hold "/", "?", "#", "%" and spaces: the console's links and requests encode
    them, and the worker reads them back as written."""
    from playwright.async_api import expect

    odd = "odd/dir?q=1#frag%20 é"
    worker = await start_worker()
    async with make_client(worker.url) as client:
        first = await client.put(odd, {"n": 1})
        await first.outcome(timeout=30)
    page, trouble = await open_page(browser, f"{worker.url}/console#/contexts")
    await page.fill("#prefix", "odd/")
    await page.press("#prefix", "Enter")
    link = page.locator("#results a")
    await expect(link).to_have_text(odd)
    await link.click()
    await expect(page.locator("#context-id")).to_have_text(odd)
    await expect(page.locator("#document")).to_contain_text('"n": 1')
    await expect(page.locator("#history tbody tr")).to_have_count(1)
    await page.reload()  # the fragment alone brings it back
    await expect(page.locator("#document")).to_contain_text('"n": 1')
    assert trouble == []


async def both_in_the_tables(a: Any, b: Any, timeout: float = 90) -> dict[str, str]:
    """Until each of the two workers' routing tables has both owning partitions: the
    owners (partition -> URL) as ``a`` sees them."""
    deadline = asyncio.get_running_loop().time() + timeout
    async with aiohttp.ClientSession() as http:
        while True:
            tables = []
            for url in (a.url, b.url):
                async with http.get(f"{url}/v1/members") as answer:
                    tables.append((await answer.json())["owners"])
            if all(len(t) == 3 and set(t.values()) == {a.url, b.url} for t in tables):
                return tables[0]
            assert asyncio.get_running_loop().time() < deadline, tables
            await asyncio.sleep(0.2)


async def test_cluster_metrics_lists_every_worker_and_names_one_that_does_not_answer(
    start_worker: Any, make_client: Any, tmp_path: Path
) -> None:
    budget = 512 * 1024 * 1024
    a = await start_worker(tmp_path / "a", memory_budget_bytes=budget)
    b = await start_worker(tmp_path / "b")
    await both_in_the_tables(a, b)
    async with make_client(a.url) as client:
        receipts = [await client.put(f"cm:{n}", {"n": n}) for n in range(6)]
        for receipt in receipts:  # each partition's owner folded its own
            await receipt.outcome(timeout=30)
    url = f"{a.url}/v1/cluster/metrics"
    figures = ("folded", "read_seconds", "reads", "memory_resident_bytes", "memory_budget_bytes")
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{b.url}/v1/contexts/cm:0") as answer:  # a point read, on b
            assert answer.status == 200
        async with http.get(url) as answer:
            assert answer.status == 200
            data = await answer.json()
        assert data["api"] == a.url
        workers = {w["api"]: w for w in data["workers"]}
        assert [w["api"] for w in data["workers"]] == [a.url, b.url]  # this worker first
        for w in workers.values():
            assert (w["reachable"], w["error"]) == (True, None)
            assert isinstance(w["at_ms"], int) and set(figures) <= set(w)
        assert workers[a.url]["memory_budget_bytes"] == budget
        assert workers[a.url]["memory_resident_bytes"] > 0
        assert workers[b.url]["memory_budget_bytes"] is None  # no budget: no memory figures
        assert workers[b.url]["reads"] >= 1
        # Every record written was folded by its partition's owner, a or b.
        assert workers[a.url]["folded"] + workers[b.url]["folded"] >= 6
        # Forwarded: the worker answers for itself alone.
        async with http.get(url, headers={FORWARDED_HEADER: b.url}) as answer:
            assert [w["api"] for w in (await answer.json())["workers"]] == [a.url]

        await b.api.close()  # B's API is down; B stays in the group
        async with http.get(url) as answer:
            assert answer.status == 200
            down = {w["api"]: w for w in (await answer.json())["workers"]}
    assert down[a.url]["reachable"] is True
    assert down[b.url]["reachable"] is False
    assert down[b.url]["error"]  # why: the connection was refused
    assert all(down[b.url][k] is None for k in figures)


async def test_the_metrics_view_plots_every_worker_and_shows_one_that_does_not_answer(
    start_worker: Any, make_client: Any, browser: Any, tmp_path: Path
) -> None:
    from playwright.async_api import expect

    budget = 512 * 1024 * 1024
    a = await start_worker(tmp_path / "a", memory_budget_bytes=budget)
    b = await start_worker(tmp_path / "b", memory_budget_bytes=budget)
    await both_in_the_tables(a, b)
    page, trouble = await open_page(browser, f"{a.url}/console#/metrics")
    phone, phone_trouble = await open_page(browser, f"{a.url}/console#/metrics", viewport=PHONE)

    task = asyncio.create_task(load(make_client, "mv", a.url, b.url))
    try:
        await expect(page.locator("#metrics-summary")).to_have_text("2 worker(s)")
        for plot in ("#fold-rate", "#read-latency", "#memory"):
            legend = page.locator(f"{plot} .legend li")
            await expect(legend).to_have_count(2)
            await expect(legend.nth(0)).to_contain_text(a.url)
            await expect(legend.nth(1)).to_contain_text(b.url)
            # one line per worker
            lines = page.locator(f"{plot} polyline")
            await expect(lines).to_have_count(2, timeout=60000)
            for i in range(2):  # a line, not only the first value
                await expect(lines.nth(i)).to_have_attribute("points", re.compile(r"^\S+ \S+"))
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    await expect(page.locator("#memory figcaption")).to_contain_text("512.0 MiB")
    await expect(page.locator("#memory line")).to_have_count(1)  # one budget, shared
    await shoot(page, "metrics-cluster")
    await expect(phone.locator("#fold-rate polyline")).to_have_count(2)
    assert await phone.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]
    await shoot(phone, "phone-metrics-cluster")

    await b.api.close()  # B's API is down; B stays in the group
    await expect(page.locator("#metrics-summary")).to_contain_text("1 not answering")
    await expect(page.locator("#metrics-unreachable li")).to_contain_text(
        re.compile(re.escape(b.url) + r" unreachable: \S+")  # and why
    )
    for plot in ("#fold-rate", "#read-latency", "#memory"):
        legend = page.locator(f"{plot} .legend li")
        await expect(legend.filter(has_text=b.url)).to_contain_text("unreachable")
        await expect(legend.filter(has_text=a.url)).not_to_contain_text("unreachable")
    await shoot(page, "metrics-worker-down")
    assert trouble == [] and phone_trouble == []
