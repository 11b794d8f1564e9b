"""Access-driven TTL policies (issue 17): the rule, its parser and the bounded read counter.

Pure: no Kafka, no clock. ``processors.toucher`` applies the rule between rounds and appends
the ``Touch`` events it decides; the read API counts reads into a ``ReadCounter``.

A policy is worker configuration, matched by context-id prefix (the longest prefix wins), so a
context gets its policy without a field in the event schema::

    session:=base=30m,min=5m,max=24h,per_read=1m[,hot=N]

The rule, for a context read ``reads`` times (``reads`` >= 1) in one touch interval::

    ttl = clamp(base + (reads - hot) * per_read, min, max)

``hot`` (default 1) is the number of reads per interval at which the TTL is exactly ``base``.
At or above it the rule only *extends*: a Touch is appended when ``now + ttl`` is later than
the current expiry by more than the slack (a tenth of ``ttl``), so a writer's longer TTL
stands. Below it (``hot`` > 1: a context read rarely) the expiry goes to ``now + ttl`` either
way when it differs by more than the slack: shortened below ``base`` once, and kept there
while the context is still read now and then (a context read ``hot - 1`` times an interval
for ever lives for ever, at a TTL under ``base``). A context whose writer gave no TTL is left
alone (the writer asked for none), and so is a context that was not read (it keeps the TTL
it had).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from decimal import Decimal

from lukhas_context.processors.exceptions import InvalidWorkerConfigError
from lukhas_context.processors.fold import MAX_ID_BYTES, MAX_TTL_MS

__all__ = [
    "InvalidTtlPolicyError",
    "ReadCounter",
    "TtlPolicies",
    "TtlPolicy",
    "parse_duration_ms",
    "parse_policy",
    "touch_decision",
    "touch_ttl_ms",
]

#: Separator of several policies in one environment variable (``LUKHAS_TTL_POLICY``): a
#: character no duration or key has; a prefix holding it cannot be given there.
ENV_SEPARATOR = ";"
#: Most policies one worker takes (a match is one dict lookup per distinct prefix length).
MAX_POLICIES = 1_000
#: The largest ``hot``.
MAX_HOT = 1_000_000
_UNITS = {"ms": 1, "s": 1_000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}
_DURATION = re.compile(r"([0-9]{1,15})(?:\.([0-9]{1,6}))?(ms|s|m|h|d)")
_KEYS = ("base", "min", "max", "per_read", "hot")
_REQUIRED = ("base", "min", "max", "per_read")


class InvalidTtlPolicyError(InvalidWorkerConfigError):
    """A ``--ttl-policy`` (``LUKHAS_TTL_POLICY``) that cannot be used; the message names the
    policy and the part of it that is wrong."""


@dataclass(frozen=True, slots=True)
class TtlPolicy:
    """How reads extend the TTL of the contexts whose id starts with ``prefix`` (ms)."""

    prefix: str
    base_ms: int
    min_ms: int
    max_ms: int
    per_read_ms: int
    hot: int = 1

    def __post_init__(self) -> None:
        where = f"TTL policy {self.prefix!r}"
        for name in ("base_ms", "min_ms", "max_ms"):
            value = getattr(self, name)
            if not 0 < value <= MAX_TTL_MS:
                raise InvalidTtlPolicyError(
                    f"{where}: {name[:-3]} is {value} ms, outside (0, {MAX_TTL_MS}] ms (the "
                    "fold's TTL limit)"
                )
        if not 0 <= self.per_read_ms <= MAX_TTL_MS:
            raise InvalidTtlPolicyError(
                f"{where}: per_read is {self.per_read_ms} ms, outside [0, {MAX_TTL_MS}] ms"
            )
        if not self.min_ms <= self.base_ms <= self.max_ms:
            raise InvalidTtlPolicyError(
                f"{where}: needs min <= base <= max, got min={self.min_ms} ms, "
                f"base={self.base_ms} ms, max={self.max_ms} ms"
            )
        if not 1 <= self.hot <= MAX_HOT:
            raise InvalidTtlPolicyError(f"{where}: hot is {self.hot}, outside 1..{MAX_HOT}")

    def spec(self) -> str:
        """The policy as ``--ttl-policy`` takes it (durations in ms)."""
        return (
            f"{self.prefix}=base={self.base_ms}ms,min={self.min_ms}ms,max={self.max_ms}ms,"
            f"per_read={self.per_read_ms}ms,hot={self.hot}"
        )


def parse_duration_ms(text: str, where: str = "duration") -> int:
    """Milliseconds of ``text``: a number with a unit (``500ms``, ``5s``, ``1.5m``, ``24h``,
    ``7d``), rounded down to a millisecond; ``InvalidTtlPolicyError`` naming ``where`` for
    anything else (no unit, a sign, a number of more than 15 digits)."""
    found = _DURATION.fullmatch(text.strip())
    if found is None:
        raise InvalidTtlPolicyError(
            f"{where}: {text[:40]!r} is not a duration (a number and a unit: ms, s, m, h, d; "
            "e.g. 30m)"
        )
    whole, fraction, unit = found.groups()
    value = Decimal(f"{whole}.{fraction or 0}") * _UNITS[unit]
    return int(value)


def parse_policy(text: str) -> TtlPolicy:
    """One policy: ``PREFIX=base=D,min=D,max=D,per_read=D[,hot=N]`` (the prefix ends at the
    first ``=``, so it cannot hold one; it may be empty: every context). Raises
    ``InvalidTtlPolicyError`` naming the bad part."""
    prefix, sep, rest = text.partition("=")
    if not sep:
        raise InvalidTtlPolicyError(
            f"TTL policy {text[:60]!r}: expected PREFIX=base=D,min=D,max=D,per_read=D[,hot=N]"
        )
    if len(prefix.encode()) > MAX_ID_BYTES:
        raise InvalidTtlPolicyError(
            f"TTL policy prefix {prefix[:40]!r}...: longer than a context id ({MAX_ID_BYTES} bytes)"
        )
    where = f"TTL policy {prefix!r}"
    fields: dict[str, str] = {}
    for part in rest.split(","):
        key, eq, value = part.partition("=")
        key = key.strip()
        if not eq or key not in _KEYS:
            raise InvalidTtlPolicyError(
                f"{where}: {part[:40]!r} is not one of {', '.join(k + '=' for k in _KEYS)}"
            )
        if key in fields:
            raise InvalidTtlPolicyError(f"{where}: {key} given twice")
        fields[key] = value
    missing = [k for k in _REQUIRED if k not in fields]
    if missing:
        raise InvalidTtlPolicyError(f"{where}: missing {', '.join(missing)}")
    ms = {k: parse_duration_ms(fields[k], f"{where}: {k}") for k in _REQUIRED}
    hot = 1
    if "hot" in fields:
        raw = fields["hot"].strip()
        if not raw.isascii() or not raw.isdigit() or len(raw) > 7:
            raise InvalidTtlPolicyError(f"{where}: hot {raw[:40]!r} is not a count 1..{MAX_HOT}")
        hot = int(raw)
    return TtlPolicy(prefix, ms["base"], ms["min"], ms["max"], ms["per_read"], hot)


class TtlPolicies:
    """The policies of one worker, matched by the longest prefix of a context id."""

    def __init__(self, policies: Iterable[TtlPolicy]) -> None:
        by_prefix: dict[bytes, TtlPolicy] = {}
        for policy in policies:
            prefix = policy.prefix.encode()
            if prefix in by_prefix:
                raise InvalidTtlPolicyError(f"TTL policy prefix {policy.prefix!r} given twice")
            by_prefix[prefix] = policy
        if len(by_prefix) > MAX_POLICIES:
            raise InvalidTtlPolicyError(f"{len(by_prefix)} TTL policies, at most {MAX_POLICIES}")
        #: Longest prefix first (for iterating and comparing).
        self._ordered = sorted(by_prefix.items(), key=lambda kv: -len(kv[0]))
        #: A match looks up the key's head of each length a prefix has, longest first: one
        #: dict lookup per distinct length, not a walk over every policy.
        self._by_prefix = by_prefix
        self._lengths = sorted({len(prefix) for prefix in by_prefix}, reverse=True)

    @classmethod
    def parse(cls, specs: Iterable[str]) -> TtlPolicies:
        """The policies of ``specs`` (each ``parse_policy``'s form); empty specs are skipped."""
        return cls(parse_policy(s) for s in specs if s.strip())

    def __bool__(self) -> bool:
        return bool(self._ordered)

    def __len__(self) -> int:
        return len(self._ordered)

    def __iter__(self) -> Iterator[TtlPolicy]:
        return iter(p for _, p in self._ordered)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, TtlPolicies) and self._ordered == other._ordered

    def __hash__(self) -> int:
        return hash(tuple(self._ordered))

    def __repr__(self) -> str:
        return f"TtlPolicies({[p.spec() for _, p in self._ordered]!r})"

    def match(self, key: bytes) -> TtlPolicy | None:
        """The policy of the longest prefix of ``key``; None when no prefix matches."""
        by_prefix = self._by_prefix
        for length in self._lengths:
            if length <= len(key):
                policy = by_prefix.get(key[:length])
                if policy is not None:
                    return policy
        return None


def touch_ttl_ms(policy: TtlPolicy, reads: int) -> int:
    """``clamp(base + (reads - hot) * per_read, min, max)`` (the module doc's rule)."""
    ttl = policy.base_ms + (reads - policy.hot) * policy.per_read_ms
    return max(policy.min_ms, min(policy.max_ms, ttl))


def touch_decision(
    policy: TtlPolicy, reads: int, now_ms: int, expires_at_ms: int | None
) -> int | None:
    """The ``ttl_ms`` of the Touch the policy asks for a context read ``reads`` times in an
    interval whose expiry is ``expires_at_ms`` (None: no TTL) at log time ``now_ms``; None
    when it asks for none: no TTL, no reads, or a change within the slack (a tenth of the
    TTL), or a shorter TTL for a context read ``hot`` times or more (that only extends)."""
    if expires_at_ms is None or reads <= 0:
        return None
    ttl = touch_ttl_ms(policy, reads)
    moved = now_ms + ttl - expires_at_ms
    slack = ttl // 10
    if reads >= policy.hot:
        return ttl if moved > slack else None
    return ttl if abs(moved) > slack else None


class ReadCounter:
    """Reads per context id since the last ``take()``, for at most ``max_contexts`` ids:
    reads of further ids are dropped and counted, so a flood of distinct ids cannot grow
    memory without bound. ``count`` is a dict increment (the fast path calls it)."""

    __slots__ = ("_admit", "_counts", "counted", "dropped", "max_contexts")

    def __init__(self, max_contexts: int, admit: Callable[[bytes], object] | None = None) -> None:
        if max_contexts < 1:
            raise InvalidWorkerConfigError(f"max_contexts must be at least 1, not {max_contexts}")
        self.max_contexts = max_contexts
        self._counts: dict[bytes, int] = {}
        #: Which ids are counted at all (a policy's; None: every id): reads of other ids
        #: neither count nor take room from those of a policy.
        self._admit = admit
        #: Reads counted and dropped since the counter was made (never reset).
        self.counted = 0
        self.dropped = 0

    def count(self, key: bytes) -> None:
        counts = self._counts
        n = counts.get(key)
        if n is not None:
            counts[key] = n + 1
        elif self._admit is not None and not self._admit(key):
            return
        elif len(counts) < self.max_contexts:
            counts[key] = 1
        else:
            self.dropped += 1
            return
        self.counted += 1

    def take(self) -> Mapping[bytes, int]:
        """The counts since the last ``take()``, and starts afresh."""
        counts, self._counts = self._counts, {}
        return counts

    def __len__(self) -> int:
        return len(self._counts)
