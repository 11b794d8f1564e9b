"""How a standby copy takes change records (``processors.standby``), without a broker: it
writes only whole rounds (a transaction's changes, which share a WAL offset, together),
passes over repeats by their numbers, asks for a rebuild when numbers jump, and passes over
records that are not changes; its store then holds what a restore from the same records
would."""

from __future__ import annotations

import uuid
from collections import namedtuple
from pathlib import Path

import pytest
import xxhash

from lukhas_context.processors.config import WorkerConfig
from lukhas_context.processors.opener import StoreOpener
from lukhas_context.processors.standby import GapError, StandbyCopy, StandbyManager
from lukhas_context.schemas.change import ROUND_END_HEADER, SEQ_HEADER, TX_END_HEADER
from lukhas_context.schemas.codec import ChangeCodec
from lukhas_context.schemas.event import ChangeKind
from lukhas_context.state.store import PartitionStore

Message = namedtuple("Message", "offset key value headers")
codec = ChangeCodec()


def _change(pos: int, key: str, wal: int, version: int, seq: int | None, end: bool = False
            ) -> Message:  # fmt: skip
    doc = b'{"v":%d}' % version
    value = codec.encode_fields(
        key.encode(), version, ChangeKind.PUT, doc, xxhash.xxh3_64_digest(doc), None, wal,
        uuid.UUID(int=wal).bytes, 1_700_000_000_000 + wal,
    )  # fmt: skip
    headers = [] if seq is None else [(SEQ_HEADER, b"%d" % seq)]
    if end:
        headers.append((TX_END_HEADER, b"1"))
    return Message(pos, key.encode(), value, headers)


@pytest.fixture
def standby(tmp_path: Path) -> tuple[StandbyManager, StandbyCopy]:
    config = WorkerConfig("127.0.0.1:1", tmp_path / "state")
    manager = StandbyManager(config, StoreOpener(config))
    store = PartitionStore(tmp_path / "state" / "partition-0")
    return manager, StandbyCopy(0, store, 0, 0)


def test_only_whole_rounds_are_written(standby: tuple[StandbyManager, StandbyCopy]) -> None:
    manager, copy = standby
    # A round with a transaction of two contexts at WAL offset 5, its last change not yet
    # read; then the rest of it in the next fetch, ending the Kafka transaction.
    manager._apply(copy, [_change(0, "a", 3, 1, 0), _change(1, "b", 5, 1, 1)])
    manager._commit(copy)
    assert copy.store.next_offset == 0  # held until the round's marker
    assert copy.store.get(b"a") is None and copy.store.get(b"b") is None
    manager._apply(copy, [_change(2, "c", 5, 1, 2, end=True)])
    manager._commit(copy)
    assert copy.store.next_offset == 6 and copy.store.change_seq == 3
    assert all(copy.store.get(k) is not None for k in (b"a", b"b", b"c"))
    assert copy.store.standby_at == 3  # past the last record (the marker is skipped)


def test_a_coalesced_round_is_saved_whole(standby: tuple[StandbyManager, StandbyCopy]) -> None:
    """A coalesced round (``WorkerConfig.coalesce_changes``) of WAL offsets 0-9 where ``a``
    changed at 2 and 9 and ``b`` at 5: it publishes b@5, a@9. Saved after b@5 alone, the copy
    would claim the state of WAL offsets 0-5 without a@2, so nothing is saved before the
    round's marker."""
    manager, copy = standby
    manager._apply(copy, [_change(0, "b", 5, 1, 0)])
    manager._commit(copy)
    assert copy.store.next_offset == 0 and copy.store.get(b"b") is None
    manager._apply(copy, [_change(1, "a", 9, 2, 1, end=True)])
    manager._commit(copy)
    assert copy.store.next_offset == 10 and copy.store.change_seq == 2
    record = copy.store.get(b"a")
    assert record is not None and record.version == 2 and copy.store.get(b"b") is not None


def test_records_from_before_the_numbers_close_on_a_later_offset(
    standby: tuple[StandbyManager, StandbyCopy],
) -> None:
    manager, copy = standby
    manager._apply(copy, [_change(0, "a", 3, 1, None), _change(1, "b", 5, 1, None)])
    manager._commit(copy)
    assert copy.store.next_offset == 4  # offset 5 is held: its other change may follow
    assert copy.store.get(b"a") is not None and copy.store.get(b"b") is None


def test_repeats_are_passed_over_and_a_jump_asks_for_a_rebuild(
    standby: tuple[StandbyManager, StandbyCopy],
) -> None:
    manager, copy = standby
    manager._apply(copy, [_change(0, "a", 1, 1, 0, end=True), _change(1, "a", 2, 2, 1, end=True)])
    manager._commit(copy)
    # Published again after a crash: numbers 0 and 1 again, then the next one.
    manager._apply(copy, [_change(2, "a", 1, 1, 0), _change(3, "a", 2, 2, 1),
                          _change(4, "a", 4, 3, 2, end=True)])  # fmt: skip
    manager._commit(copy)
    record = copy.store.get(b"a")
    assert record is not None and record.version == 3 and copy.store.change_seq == 3
    with pytest.raises(GapError, match="change 3 of partition 0 is gone"):
        manager._apply(copy, [_change(9, "a", 8, 5, 4, end=True)])


def test_records_that_are_not_changes_change_nothing(
    standby: tuple[StandbyManager, StandbyCopy],
) -> None:
    manager, copy = standby
    garbage = [
        Message(0, b"a", b"\x00not a change", [(SEQ_HEADER, b"0")]),
        Message(1, b"\xff\x00", b"not a fence", [(SEQ_HEADER, b"1")]),
        Message(2, None, None, [(SEQ_HEADER, b"2")]),
    ]
    manager._apply(copy, [*garbage, _change(3, "b", 7, 1, 3, end=True)])
    manager._commit(copy)
    assert copy.store.get(b"a") is None and copy.store.get(b"b") is not None
    assert copy.store.next_offset == 8 and copy.store.change_seq == 4
    assert copy.store.summary() == copy.store.check()  # the digest holds what is there


def test_a_round_published_at_least_once_ends_with_rend(
    standby: tuple[StandbyManager, StandbyCopy],
) -> None:
    manager, copy = standby
    last = _change(1, "b", 5, 1, 1)
    last = last._replace(headers=[*last.headers, (ROUND_END_HEADER, b"1")])
    manager._apply(copy, [_change(0, "a", 5, 1, 0), last])
    manager._commit(copy)
    assert copy.store.next_offset == 6 and copy.store.change_seq == 2
    assert copy.store.get(b"a") is not None and copy.store.get(b"b") is not None
