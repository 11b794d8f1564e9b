"""``DedupeWindow`` against a model: a list of every id admitted, with its offset and hash."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lukhas_context.state.dedupe import DedupeWindow

IDS = st.sampled_from([bytes([i]) * 16 for i in range(6)])
STEPS = st.lists(st.tuples(IDS, st.integers(1, 5), st.integers(0, 3), st.booleans()), max_size=80)


@given(st.integers(1, 12), STEPS)
def test_the_window_decides_as_the_model(
    size: int, steps: list[tuple[bytes, int, int, bool]]
) -> None:
    """Each step: an event at a later offset (gap 1-5), with one of a few ids and hashes; and,
    sometimes, the fold forgets what is below the window. ``admit`` answers the id's last
    admitted use within ``size`` offsets before, and admits only when there is none."""
    window = DedupeWindow(size)
    admitted: list[tuple[bytes, int, int]] = []
    offset = 0
    for event_id, gap, payload_hash, forget in steps:
        offset += gap
        uses = [(o, h) for i, o, h in admitted if i == event_id and o >= offset - size]
        expected = uses[-1] if uses else None
        assert window.prior_use(event_id, offset) == expected
        assert window.admit(event_id, offset, payload_hash) == expected
        if expected is None:
            admitted.append((event_id, offset, payload_hash))
        if forget:
            window.forget_below(offset - size)
        # In offset order (the native loop and forget_below rely on it), never over 2 x size
        # ids past a forget, and every id inside the window still there.
        offsets = [v >> 64 for v in window.ids.values()]
        assert offsets == sorted(offsets)
        inside = {i for i, o, _ in admitted if o >= offset - size}
        assert inside <= set(window.ids)
        if forget:
            assert len(window.ids) <= 2 * size + 1


def test_a_retry_or_a_reuse_leaves_the_window_as_it_was() -> None:
    window = DedupeWindow(10)
    assert window.admit(b"a" * 16, 5, 7) is None
    before = dict(window.ids)
    assert window.admit(b"a" * 16, 9, 7) == (5, 7)  # a retry: same hash
    assert window.admit(b"a" * 16, 12, 8) == (5, 7)  # a reuse: other bytes
    assert window.ids == before
    assert window.admit(b"a" * 16, 16, 8) is None  # 5 is out of the window of 16
    assert window.ids[b"a" * 16] >> 64 == 16


# ---- the C helpers of the hot path (processors._fastfold) --------------------------------

try:
    from lukhas_context.processors._fastfold import barrier_end, window_trim
except ImportError:  # pure-Python run
    barrier_end = window_trim = None  # type: ignore[assignment]

_native = pytest.mark.skipif(window_trim is None, reason="the native extension is not built")


@_native
@settings(max_examples=300, deadline=None)
@given(
    ids=st.dictionaries(
        st.binary(max_size=20), st.integers(0, 1 << 200) | st.integers(-(1 << 70), 0), max_size=60
    ),
    floor=st.integers(-(1 << 80), 1 << 201),
)
def test_window_trim_is_the_dict_comprehension(ids: dict[bytes, int], floor: int) -> None:
    got = window_trim(ids, floor)
    want = {k: v for k, v in ids.items() if v >= floor}
    assert got == want and list(got) == list(want)  # the same order
    assert got is not ids


@_native
def test_forget_below_drops_the_same_ids_natively_or_not() -> None:
    def filled() -> DedupeWindow:
        window = DedupeWindow(10)
        for offset in range(40):
            window.admit(b"id-%d" % (offset % 23), offset, offset * 7)
        return window

    native = filled()
    native.forget_below(25, window_trim)
    plain = filled()
    plain.forget_below(25)
    assert list(native.ids.items()) == list(plain.ids.items())
    assert all(v >> 64 >= 25 for v in native.ids.values())


class _Rec:
    def __init__(self, key: object) -> None:
        self.key = key


@_native
@settings(max_examples=300, deadline=None)
@given(st.lists(st.none() | st.sampled_from([b"", b"a", b"\x00", b"ctx"]), max_size=30))
def test_barrier_end_is_segment_ends_loop(keys: list[bytes | None]) -> None:
    from lukhas_context.processors import round as rnd

    records = [_Rec(k) for k in keys]
    want = next((i + 1 for i, k in enumerate(keys) if k == b""), len(keys))
    assert barrier_end(records) == want
    assert rnd.segment_end(records) == want
