"""``lukhas verify``: is a partition's state what the log says it is?

One side, the *subject*, is a partition's store: the live one, frozen by the worker serving it
(``processors.verify_api``), or one in a state dir no worker holds open. Its digest is first
recomputed from its records (a store whose records disagree with the digest it keeps is
corrupt). The other side is rebuilt or asked for at the subject's very offset:

- ``replay``: the WAL ``[0, offset)`` folded into a scratch store with the worker's own fold;
- ``checkpoint:ID``: that checkpoint, with the WAL folded on from it to the offset;
- a worker's URL: that worker's own store of the partition (never forwarded), which must be at
  the same offset (a live partition moves: both are frozen again a few times until they are).

Equal digests end it. Otherwise ``state.ranges.differences`` bisects key ranges by their
digests to the first differing contexts, reading each side about once, never dumping it.
Nothing live is changed: the scratch store and the worker's frozen copies are deleted at the
end, and a replay writes no checkpoint.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import shutil
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from lukhas_context.ops.exceptions import NotConfiguredError, OpsError
from lukhas_context.processors.config import WorkerConfig
from lukhas_context.processors.fanout import FORWARDED_HEADER
from lukhas_context.state.exceptions import StoreLockedError
from lukhas_context.state.ranges import Hi, LocalRanges, RangeDigest, RangeSource, Row, differences
from lukhas_context.state.store import PartitionStore
from lukhas_context.streams.config import bearer_headers

__all__ = ["Against", "Side", "VerifyError", "parse_against", "verify_partition"]

#: Times a pair of live stores is frozen again when their offsets differ.
SAME_OFFSET_ATTEMPTS = 5
HTTP_TIMEOUT_S = 300.0


class VerifyError(OpsError):
    """``lukhas verify`` cannot compare: a side cannot be opened, frozen or rebuilt."""


@dataclass(frozen=True)
class Against:
    """What the subject is compared with: ``kind`` replay, checkpoint or worker."""

    kind: str
    value: str | None = None

    def __str__(self) -> str:
        if self.kind == "replay":
            return "replay"
        return f"{self.kind}:{self.value}" if self.kind == "checkpoint" else str(self.value)


def parse_against(raw: str) -> Against:
    """``replay``, ``checkpoint:ID`` (or ``checkpoint:latest``) or ``http(s)://...``;
    ``ValueError`` with the reason otherwise."""
    if raw == "replay":
        return Against("replay")
    if raw.startswith("checkpoint:") and len(raw) > len("checkpoint:"):
        return Against("checkpoint", raw.split(":", 1)[1])
    if raw.startswith(("http://", "https://")):
        return Against("worker", raw.rstrip("/"))
    raise ValueError(
        f"{raw!r}: expected replay, checkpoint:ID (or checkpoint:latest) or a worker's URL"
    )


@dataclass
class Side:
    """One side of a comparison, frozen: where it is, what it holds, how to read ranges."""

    name: str
    ranges: RangeSource
    next_offset: int
    digest: str
    records: int
    documents: int
    #: The digest and record count recomputed from the records (None: not recomputed).
    recomputed: dict[str, Any] | None = None
    _close: Any = field(default=None, repr=False)

    @property
    def corrupt(self) -> bool:
        return self.recomputed is not None and (
            self.recomputed["digest"] != self.digest or self.recomputed["records"] != self.records
        )

    def to_dict(self) -> dict[str, Any]:
        return {"source": self.name, "next_offset": self.next_offset, "digest": self.digest,
                "records": self.records, "documents": self.documents,
                "recomputed": self.recomputed, "corrupt": self.corrupt}  # fmt: skip

    async def close(self) -> None:
        if self._close is not None:
            closing, self._close = self._close, None
            await closing()


# --- a store opened here ---------------------------------------------------------------------


def local_side(name: str, store: PartitionStore, recompute: bool,
               cleanup: Path | None = None) -> Side:  # fmt: skip
    """A side over ``store`` (closed, and ``cleanup`` deleted, by ``Side.close``)."""
    kept = store.summary()
    recomputed = None
    if recompute:
        found = store.verify()
        recomputed = {"digest": found.digest_hex, "records": found.records,
                      "documents": found.documents}  # fmt: skip

    async def close() -> None:
        store.close()
        if cleanup is not None:
            shutil.rmtree(cleanup, ignore_errors=True)

    return Side(name, LocalRanges(store), kept.next_offset, kept.digest_hex, kept.records,
                kept.documents, recomputed, close)  # fmt: skip


def open_stored(path: Path) -> Side:
    """The store at ``path``, which no worker may hold open."""
    if not (path / "CURRENT").is_file():
        raise VerifyError(f"no store at {path}")
    try:
        store = PartitionStore(path)
    except StoreLockedError:
        raise VerifyError(
            f"{path} is open in a running worker: verify it through the worker's API "
            "(--api, or no --state-dir for the local cluster)"
        ) from None
    try:
        return local_side(f"store {path}", store, recompute=True)
    except BaseException:
        store.close()
        raise


# --- a worker's frozen copy ------------------------------------------------------------------


class RemoteRanges:
    """``RangeSource`` over a worker's verify session (``processors.verify_api``)."""

    def __init__(self, http: aiohttp.ClientSession, url: str, partition: int, session: str,
                 pinned: bool) -> None:  # fmt: skip
        self.base = f"{url}/v1/partitions/{partition}/verify/{session}"
        self.http = http
        self.headers = {FORWARDED_HEADER: "lukhas-verify"} if pinned else {}

    async def _post(self, what: str, body: dict[str, Any]) -> dict[str, Any]:
        return await _call(self.http, "POST", f"{self.base}/{what}", body, self.headers)

    def _range(self, lo: bytes, hi: Hi) -> dict[str, Any]:
        return {"lo": _b64(lo), "hi": None if hi is None else _b64(hi)}

    async def split(self, lo: bytes, hi: Hi, records: int, parts: int
                    ) -> tuple[list[bytes], list[RangeDigest]]:  # fmt: skip
        data = await self._post("split", {**self._range(lo, hi), "records": records,
                                          "parts": parts})  # fmt: skip
        return [base64.b64decode(b) for b in data["bounds"]], _digests(data["digests"])

    async def summarize(self, lo: bytes, hi: Hi, bounds: list[bytes]) -> list[RangeDigest]:
        data = await self._post("summarize", {**self._range(lo, hi),
                                              "bounds": [_b64(b) for b in bounds]})  # fmt: skip
        return _digests(data["digests"])

    async def rows(self, lo: bytes, hi: Hi, limit: int) -> tuple[list[Row], bool]:
        data = await self._post("rows", {**self._range(lo, hi), "limit": limit})
        rows = [Row(base64.b64decode(r["key"]), int(r["hash"], 16), r["version"], r["deleted"],
                    r["offset"]) for r in data["rows"]]  # fmt: skip
        return rows, bool(data["more"])


async def open_remote(http: aiohttp.ClientSession, url: str, partition: int, pinned: bool
                      ) -> Side:  # fmt: skip
    """Freezes ``partition``'s live store on the worker at ``url`` (``pinned``: that worker's
    own, else the one of whichever worker serves the partition)."""
    headers = {FORWARDED_HEADER: "lukhas-verify"} if pinned else {}
    data = await _call(http, "POST", f"{url}/v1/partitions/{partition}/verify", None, headers)
    session = str(data["session"])

    async def close() -> None:
        with contextlib.suppress(VerifyError, aiohttp.ClientError, OSError, TimeoutError):
            await _call(http, "DELETE", f"{url}/v1/partitions/{partition}/verify/{session}",
                        None, headers)  # fmt: skip

    try:
        return Side(f"worker {url}", RemoteRanges(http, url, partition, session, pinned),
                    int(data["next_offset"]), str(data["digest"]), int(data["records"]),
                    int(data["documents"]), dict(data["recomputed"]), close)  # fmt: skip
    except (KeyError, TypeError, ValueError):
        await close()
        raise VerifyError(f"{url} answered a verify session without its summary") from None


async def _call(http: aiohttp.ClientSession, method: str, url: str, body: Any,
                headers: dict[str, str]) -> dict[str, Any]:  # fmt: skip
    try:
        async with http.request(method, url, json=body, headers=headers) as response:
            try:
                data = await response.json(content_type=None)
            except ValueError:
                data = None
            if response.status != 200 or not isinstance(data, dict):
                said = data if isinstance(data, dict) else {}
                reason = said.get("detail") or said.get("error")
                raise VerifyError(f"{method} {url}: {response.status} "
                                  f"{reason or response.reason}")  # fmt: skip
            return data
    except aiohttp.ClientConnectionError as exc:
        raise VerifyError(f"cannot reach {url}: {exc}") from None
    except aiohttp.ClientError as exc:  # a broken answer (payload, disconnect mid-way)
        raise VerifyError(f"{method} {url}: {type(exc).__name__}: {exc}") from None
    except TimeoutError:
        raise VerifyError(f"{url} did not answer within {HTTP_TIMEOUT_S:g} s") from None


@contextlib.asynccontextmanager
async def http_session(token: str | None = None) -> AsyncIterator[aiohttp.ClientSession]:
    """A session for the workers' verify endpoints (``token``: the read API's, if any)."""
    headers = bearer_headers(token)
    timeout = aiohttp.ClientTimeout(total=HTTP_TIMEOUT_S)
    async with aiohttp.ClientSession(timeout=timeout, headers=headers) as http:
        yield http


def _b64(key: bytes) -> str:
    return base64.b64encode(key).decode()


def _digests(raw: list[dict[str, Any]]) -> list[RangeDigest]:
    return [RangeDigest(int(d["digest"], 16), int(d["records"])) for d in raw]


# --- the comparison --------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def kept_alive(side: Side, every_s: float = 30.0) -> AsyncIterator[None]:
    """While the body runs (a long replay), ``side``'s frozen copy is used every ``every_s``
    seconds, so its worker does not close it as idle (``processors.verify_api.IDLE_S``)."""

    async def ping() -> None:
        while True:
            await asyncio.sleep(every_s)
            with contextlib.suppress(VerifyError):
                await side.ranges.rows(b"", None, 1)

    task = asyncio.create_task(ping()) if isinstance(side.ranges, RemoteRanges) else None
    try:
        yield
    finally:
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


async def rebuilt_side(config: WorkerConfig, partition: int, until: int, against: Against,
                       scratch: Path | None, progress: bool) -> Side:  # fmt: skip
    """The fold of WAL ``[0, until)`` in a scratch store: by replay, or from a checkpoint of
    ``config``'s checkpoint root."""
    from lukhas_context.processors.offline import replay_aside

    checkpoint_id = against.value if against.kind == "checkpoint" else None
    if checkpoint_id == "latest":
        from lukhas_context.state.checkpoints import CheckpointDir

        found = [m for m in CheckpointDir(config.checkpoint_root, config.topics.events)
                 .valid(partition) if m.next_offset <= until]  # fmt: skip
        if not found:
            raise VerifyError(f"no valid checkpoint of partition {partition} at or below offset "
                              f"{until} in {config.checkpoint_root}")  # fmt: skip
        checkpoint_id = found[0].checkpoint_id
    where = Path(tempfile.mkdtemp(prefix="lukhas-verify-", dir=scratch))
    try:
        store, how = await replay_aside(config, partition, where, until, checkpoint_id, progress)
    except BaseException:
        shutil.rmtree(where, ignore_errors=True)
        raise
    return local_side(how, store, recompute=False, cleanup=where)


async def verify_partition(subject: Side, other: Side, partition: int, limit: int,
                           started: float) -> dict[str, Any]:  # fmt: skip
    """The report of one partition: both sides, whether they are equal, and the first
    ``limit`` differing contexts when they are not."""
    if subject.next_offset != other.next_offset:
        raise VerifyError(
            f"partition {partition}: {subject.name} is at offset {subject.next_offset}, "
            f"{other.name} at {other.next_offset}"
        )
    equal = subject.digest == other.digest and subject.records == other.records
    found = None
    if not equal:
        # a corrupt side's kept count may be anything: bisect by what its records hold
        found = await differences(subject.ranges, other.ranges, _count(subject),
                                  _count(other), limit=limit)  # fmt: skip
    return {
        "partition": partition,
        "next_offset": subject.next_offset,
        "equal": equal and not subject.corrupt and not other.corrupt,
        "subject": subject.to_dict(),
        "against": other.to_dict(),
        "differences": [] if found is None else
        [d.to_dict("subject", "against") for d in found.differences],
        "truncated": bool(found and found.truncated),
        # Digests that differ over contexts that all agree: what differs is the fences (the
        # highest fencing token of each lock), which the digest counts too.
        "fences_differ": found is not None and not found.differences and not found.truncated,
        "requests": 0 if found is None else found.requests,
        "seconds": round(time.monotonic() - started, 3),
    }  # fmt: skip


def _count(side: Side) -> int:
    return int(side.recomputed["records"]) if side.recomputed is not None else side.records


async def same_offset(open_a: Any, open_b: Any, attempts: int = SAME_OFFSET_ATTEMPTS
                      ) -> tuple[Side, Side]:  # fmt: skip
    """Both sides frozen at one offset: frozen again (up to ``attempts`` times, a second
    apart) while a live partition moves between the two freezes."""
    for attempt in range(attempts):
        a = await open_a()
        try:
            b = await open_b()
        except BaseException:
            await a.close()
            raise
        if a.next_offset == b.next_offset or attempt == attempts - 1:
            return a, b
        await a.close()
        await b.close()
        await asyncio.sleep(1.0)
    raise AssertionError("unreachable")


def need_checkpoint_root(config: WorkerConfig | None, against: Against) -> WorkerConfig:
    if config is None:
        raise NotConfiguredError(
            f"--against {against} needs Kafka and the checkpoints: pass --bootstrap and "
            "--checkpoint-dir (or --state-dir), or run `lukhas up` first"
        )
    return config
