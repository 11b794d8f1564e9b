"""Evicting a dead peer from the group (``lukhas worker --evict-dead-peers``).

A worker killed with ``kill -9`` does not leave its consumer group: the coordinator moves its
partitions only once its session times out (6 s at least with the broker's defaults), and
until then every read of those partitions fails. Its process is gone, though, and its host
says so at once: a connection to its read API is refused. With ``--evict-dead-peers`` each
worker probes the read API of every other member of its group (a TCP connect, every
``PROBE_S``) and, when one that has accepted connections before refuses ``REFUSALS`` in a row
over at least ``MIN_SPAN_S``, asks the coordinator to remove that member (a LeaveGroup
request on its behalf, by its member id) and rejoins at once: the group hands the dead
member's partitions on in well under a second (opening them takes what it takes).

Only a refusal counts. A timeout (a host that is down or cut off, a stalled process) resets
the count: that is the session timeout's to judge, since the member may still be folding. A
member that never accepted a connection (still starting) is never evicted, nor one evicted
already (once per member id). Evicting a member that was in fact alive costs a rebalance: it
learns at its next heartbeat that it is out, stops serving (its partitions were revoked)
and joins again; exactly once, its transactional producers are fenced by the partitions'
new owners, as after any rebalance.

``PeerLiveness`` is the decision, pure and clock-driven (unit-tested); ``probe`` is the
connect; ``processors.members.Membership`` runs them.
"""

from __future__ import annotations

import asyncio
import enum
import socket
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

__all__ = ["MIN_SPAN_S", "PROBE_S", "REFUSALS", "PeerLiveness", "Probe", "probe"]

#: How often each peer's read API is probed.
PROBE_S = 0.1
#: Refused connections in a row that make a peer dead...
REFUSALS = 3
#: ... over at least this long (one blip of a restarting listener is not death).
MIN_SPAN_S = 0.2
#: How long a probe may take; past it the outcome is unknown.
PROBE_TIMEOUT_S = 0.5


class Probe(enum.Enum):
    ALIVE = "alive"
    REFUSED = "refused"
    UNKNOWN = "unknown"


@dataclass(slots=True)
class _Peer:
    seen_alive: bool = False
    refusals: int = 0
    first_refused: float = 0.0


@dataclass(slots=True)
class PeerLiveness:
    """What the probes of each member (by member id) say, and when one is dead."""

    refusals: int = REFUSALS
    min_span_s: float = MIN_SPAN_S
    _peers: dict[str, _Peer] = field(default_factory=dict)
    #: Member ids evicted (never twice).
    evicted: set[str] = field(default_factory=set)

    def observe(self, member_id: str, outcome: Probe, now: float) -> bool:
        """Records one probe of ``member_id`` at ``now``; True when it is to be evicted now
        (then never again)."""
        if member_id in self.evicted:
            return False
        peer = self._peers.setdefault(member_id, _Peer())
        if outcome is Probe.ALIVE:
            peer.seen_alive, peer.refusals = True, 0
            return False
        if outcome is Probe.UNKNOWN or not peer.seen_alive:
            peer.refusals = 0
            return False
        peer.refusals += 1
        if peer.refusals == 1:
            peer.first_refused = now
        if peer.refusals >= self.refusals and now - peer.first_refused >= self.min_span_s:
            self.evicted.add(member_id)
            del self._peers[member_id]
            return True
        return False

    def forgive(self, member_id: str) -> None:
        """The eviction ``observe`` asked for could not be made (the coordinator moved, a
        timeout): the member may be judged again from its next probes."""
        self.evicted.discard(member_id)
        self._peers[member_id] = _Peer(seen_alive=True)

    def keep_only(self, member_ids: set[str]) -> None:
        """Forgets the members no longer in the group (their ids are not reused)."""
        for gone in set(self._peers) - member_ids:
            del self._peers[gone]


def _address(url: str) -> tuple[str, int] | None:
    try:
        parts = urlsplit(url)
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        return None
    return (parts.hostname, port) if parts.hostname else None


#: host, port -> (when resolved, its socket addresses): a name is looked up at most every
#: ``RESOLVE_S``, not at every probe (each lookup takes a thread of the default pool).
_resolved: dict[tuple[str, int], tuple[float, list[tuple[int, Any]]]] = {}
RESOLVE_S = 30.0


async def _addresses(host: str, port: int) -> list[tuple[int, Any]]:
    loop = asyncio.get_running_loop()
    cached = _resolved.get((host, port))
    if cached is not None and loop.time() - cached[0] < RESOLVE_S:
        return cached[1]
    infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    found: list[tuple[int, Any]] = [(int(family), address) for family, _, _, _, address in infos]
    if len(_resolved) > 1024:
        _resolved.clear()
    _resolved[(host, port)] = (loop.time(), found)
    return found


async def _connect(family: int, address: Any, timeout_s: float) -> None:
    loop = asyncio.get_running_loop()
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setblocking(False)
    try:
        await asyncio.wait_for(loop.sock_connect(sock, address), timeout_s)
    finally:
        sock.close()


async def probe(url: str, timeout_s: float = PROBE_TIMEOUT_S) -> Probe:
    """Whether the read API at ``url`` accepts a TCP connection: ``ALIVE`` when one of its
    addresses does; ``REFUSED`` only when every address refuses (nothing listens there: the
    process is gone); ``UNKNOWN`` for a timeout, a name that does not resolve, or any other
    error."""
    host_port = _address(url)
    if host_port is None:
        return Probe.UNKNOWN
    try:
        addresses = await asyncio.wait_for(_addresses(*host_port), timeout_s)
    except (OSError, TimeoutError, UnicodeError):
        return Probe.UNKNOWN
    refused = 0
    for family, address in addresses:
        try:
            await _connect(family, address, timeout_s)
        except ConnectionRefusedError:
            refused += 1
            continue
        except (OSError, TimeoutError):
            continue
        return Probe.ALIVE
    return Probe.REFUSED if addresses and refused == len(addresses) else Probe.UNKNOWN
