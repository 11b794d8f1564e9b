"""Which broker may say where a partition ends (``streams.leader_end``): the choice among
brokers' metadata, and the wire layout of the two requests it sends."""

from __future__ import annotations

import struct

from lukhas_context.streams.leader_end import (
    LeaderView,
    _EpochListOffsets,
    _EpochMetadata,
    _ListOffsetsRequestV4,
    _MetadataRequestV7,
    _MetadataResponseV7,
    _view,
    choose_leader,
)


def test_the_newest_epoch_wins_over_a_stale_leader() -> None:
    # broker 1 came back from a cut and still says it leads (epoch 4); the others saw the
    # election of broker 2 (epoch 5)
    views = [LeaderView(1, 4), LeaderView(2, 5), LeaderView(2, 5)]
    assert choose_leader(views, 3) == LeaderView(2, 5)
    assert choose_leader(list(reversed(views)), 3) == LeaderView(2, 5)


def test_no_majority_means_no_answer() -> None:
    # only the stale broker answers: it may be on the wrong side of a cut
    assert choose_leader([LeaderView(1, 4), None, None], 3) is None
    assert choose_leader([LeaderView(1, 4), LeaderView(1, 4), None], 3) == LeaderView(1, 4)
    assert choose_leader([LeaderView(1, 4), None], 2) is None  # half is not a majority
    assert choose_leader([], 3) is None
    assert choose_leader([LeaderView(7, 0)], 1) == LeaderView(7, 0)  # one broker alone


def test_no_leader_means_no_answer() -> None:
    assert choose_leader([LeaderView(-1, 6), LeaderView(2, 5), LeaderView(2, 5)], 3) is None
    assert choose_leader([LeaderView(2, -1), LeaderView(2, -1)], 2) is None


def test_list_offsets_v4_sends_the_epoch_as_int32() -> None:
    # aiokafka's own v4 declares current_leader_epoch as INT64, which a broker misreads
    request = _EpochListOffsets("wal", 3, 9).prepare({2: (1, 9)})
    assert isinstance(request, _ListOffsetsRequestV4)
    body = request.encode()
    topic = b"wal"
    expected = (
        struct.pack(">ib", -1, 0)  # replica_id (a consumer), read_uncommitted
        + struct.pack(">i", 1) + struct.pack(">h", len(topic)) + topic
        + struct.pack(">i", 1) + struct.pack(">iiq", 3, 9, -1)  # partition, epoch, latest
    )  # fmt: skip
    assert body == expected


def test_metadata_v7_asks_for_one_topic_and_creates_none() -> None:
    request = _EpochMetadata("wal").prepare({3: (0, 12)})
    assert isinstance(request, _MetadataRequestV7)
    assert request.encode() == struct.pack(">ih", 1, 3) + b"wal" + b"\x00"


def test_a_metadata_answer_gives_the_partition_view() -> None:
    response = _MetadataResponseV7(
        0, [(1, "h", 9092, None)], "cluster", 1,
        [
            (0, "other", False, [(0, 0, 1, 8, [1], [1], [])]),
            (0, "wal", False, [(0, 0, 1, 2, [1], [1], []), (0, 3, 2, 5, [1, 2], [2], [])]),
        ],
    )  # fmt: skip
    decoded = _MetadataResponseV7.decode(response.encode())
    assert _view(decoded, "wal", 3) == LeaderView(2, 5)
    assert _view(decoded, "wal", 0) == LeaderView(1, 2)
    assert _view(decoded, "wal", 4) is None  # not in the answer
    errored = _MetadataResponseV7(0, [], "c", 1, [(3, "wal", False, [])])
    assert _view(errored, "wal", 0) is None
