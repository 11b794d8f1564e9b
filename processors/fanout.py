"""Asking the other members of the group, all at once: the routes that answer for the whole
cluster (``/v1/cluster``, ``/v1/cluster/metrics``, ``/v1/checkpoints``, a listing's pages)
send each member the same request, marked forwarded so it answers for itself alone, and
merge what comes back.

``Peers.ask_all`` is that one step: every member asked at once, each within its timeout, and
for each either its JSON object or why there is none (no answer in time, a connection
error, a status other than 200, an answer that is not a JSON object). It never raises for
a member's failure: a route that merges the answers names the members that did not answer
rather than failing as a whole (an operator must see a worker that is down, not an error).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson

from lukhas_context.processors.members import Member

#: Set on a request one worker sends another (its value: the sender's URL): the receiver
#: answers it for itself alone, and never forwards it again.
FORWARDED_HEADER = "X-Lukhas-Forwarded-By"
#: Seconds a member has to answer for its part of a cluster-wide answer.
PEER_TIMEOUT_S = 3.0


@dataclass(frozen=True, slots=True)
class Answer:
    """One member's answer: ``data``, its JSON object, or None and ``why`` there is none."""

    member: Member
    data: dict[str, Any] | None
    why: str | None = None

    def own_entry(self) -> dict[str, Any] | None:
        """The member's own entry in a cluster-wide answer (a forwarded request is answered
        with that alone: the first of its ``workers``); None when there is none."""
        workers = None if self.data is None else self.data.get("workers")
        entry = workers[0] if isinstance(workers, list) and workers else None
        return entry if isinstance(entry, dict) else None


def unreachable(member: Member, reason: str) -> dict[str, Any]:
    """How a cluster-wide answer's entry of a member that gave none opens: who, and why."""
    return {"api": member.api, "member": member.member, "reachable": False, "error": reason}


class Peers:
    """The HTTP session this worker asks other workers with (forwards and fan-outs), opened
    on first use; ``headers`` go with every request: the forwarded mark and the API token."""

    def __init__(self, own_api: str, token_headers: Mapping[str, str]) -> None:
        self.headers = {FORWARDED_HEADER: own_api, **token_headers}
        self._http: aiohttp.ClientSession | None = None

    def session(self) -> aiohttp.ClientSession:
        if self._http is None:
            self._http = aiohttp.ClientSession()
        return self._http

    async def close(self) -> None:
        if self._http is not None:
            await self._http.close()
            self._http = None

    async def ask_all(
        self, members: Iterable[Member], path: str, timeout: float = PEER_TIMEOUT_S
    ) -> list[Answer]:
        """``GET path`` (with its query) of each of ``members`` at once, in their order."""
        return list(await asyncio.gather(*(self.ask(m, path, timeout) for m in members)))

    async def ask(self, member: Member, path: str, timeout: float = PEER_TIMEOUT_S) -> Answer:
        """``member``'s answer to ``GET path`` within ``timeout`` seconds."""
        url = member.forward_url.rstrip("/") + path
        try:
            async with self.session().get(
                url, headers=self.headers, timeout=aiohttp.ClientTimeout(total=timeout)
            ) as answer:
                if answer.status != 200:
                    return Answer(member, None, f"its {path} answered {answer.status}")
                data = orjson.loads(await answer.read())
        except TimeoutError:
            return Answer(member, None, f"no answer within {timeout:g} s")
        except aiohttp.ClientError as e:
            return Answer(member, None, f"{type(e).__name__}: {e}")
        except ValueError:
            return Answer(member, None, f"its {path} answer is not JSON")
        if not isinstance(data, dict):
            return Answer(member, None, f"its {path} answer is odd")
        return Answer(member, data)
