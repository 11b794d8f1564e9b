"""The pure fold: versions, conditions, TTL, tombstones, rejections; properties by Hypothesis."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from lukhas_context.processors.fold import MAX_TTL_MS, Limits, Status, apply, checksum
from lukhas_context.schemas.event import (
    ChangeKind,
    CheckpointBarrier,
    ContextEvent,
    Delete,
    Expire,
    Fence,
    Patch,
    PatchFormat,
    Put,
    Touch,
)
from lukhas_context.state.record import ContextRecord, decode_record, encode_record

LIMITS = Limits(max_document_bytes=1000)
EID = bytes(16)


def put(
    doc: bytes = b'{"a":1}', ttl: int | None = None, expected: int | None = None
) -> ContextEvent:
    return ContextEvent(EID, "c", Put(doc, ttl), expected)


def delete(expected: int | None = None) -> ContextEvent:
    return ContextEvent(EID, "c", Delete(), expected)


def fold(events: list[ContextEvent], t0: int = 1000) -> tuple[ContextRecord | None, list[Status]]:
    record: ContextRecord | None = None
    statuses = []
    for offset, event in enumerate(events):
        record, outcome = apply(record, event, offset, t0 + offset, LIMITS)
        statuses.append(outcome.status)
    return record, statuses


def test_put_creates_version_1_with_canonical_doc_and_checksum() -> None:
    record, outcome = apply(None, put(b'{ "b": 1, "a": [1, 2] }'), 7, 5000, LIMITS)
    assert outcome.status is Status.APPLIED and outcome.version == 1
    assert outcome.kind is ChangeKind.PUT
    assert record is not None
    assert record.doc == b'{"a":[1,2],"b":1}'
    assert record.checksum == checksum(record.doc)
    assert (record.version, record.offset, record.log_time_ms) == (1, 7, 5000)
    assert record.expires_at_ms is None


def test_every_applied_event_raises_the_version_by_one() -> None:
    record, statuses = fold([put(), put(), delete(), put(), put()])
    assert statuses == [Status.APPLIED] * 5
    assert record is not None and record.version == 5


def test_versions_continue_after_delete_so_stale_conditions_fail() -> None:
    record, statuses = fold([put(), put(), delete(), put(expected=0), put(expected=2)])
    assert statuses[:4] == [Status.APPLIED] * 4
    assert statuses[4] is Status.CONFLICT  # version 2 was before the delete: ABA refused
    assert record is not None and record.version == 4


def test_delete_leaves_a_tombstone_and_deleting_again_is_rejected() -> None:
    record, statuses = fold([put(), delete(), delete()])
    assert statuses == [Status.APPLIED, Status.APPLIED, Status.REJECTED]
    assert record is not None and record.doc is None and record.version == 2


def test_expected_version_conflict_reports_the_current_version() -> None:
    record, _ = fold([put(), put()])
    new, outcome = apply(record, put(expected=1), 9, 9000, LIMITS)
    assert outcome.status is Status.CONFLICT and outcome.version == 2
    assert new is record


def test_expected_version_zero_means_must_not_exist() -> None:
    _, statuses = fold([put(expected=0), put(expected=0)])
    assert statuses == [Status.APPLIED, Status.CONFLICT]


def test_ttl_sets_expiry_from_log_time_and_an_expired_context_counts_as_absent() -> None:
    record, outcome = apply(None, put(ttl=100), 0, 1000, LIMITS)
    assert record is not None and record.expires_at_ms == 1100
    assert record.is_live(1099) and not record.is_live(1100)
    again, outcome = apply(record, put(expected=0), 1, 1100, LIMITS)
    assert outcome.status is Status.APPLIED and outcome.version == 2
    assert again is not None and again.expires_at_ms is None
    gone, outcome = apply(record, delete(), 1, 1200, LIMITS)
    assert outcome.status is Status.REJECTED and gone is record


def test_bad_documents_and_ttls_are_rejected() -> None:
    for doc in (b"", b"[1]", b"nope", b'"s"', b"{", b'{"a":' + b"1" * 2000 + b"}", b"\xff"):
        record, outcome = apply(None, put(doc), 0, 0, LIMITS)
        assert outcome.status is Status.REJECTED and record is None, doc
    for ttl in (0, -1, MAX_TTL_MS + 1):
        record, outcome = apply(None, put(ttl=ttl), 0, 0, LIMITS)
        assert outcome.status is Status.REJECTED and record is None


def test_keyed_checkpoint_barriers_are_rejected_and_fences_are_checked_not_ignored() -> None:
    existing, _ = fold([put()])
    new, outcome = apply(existing, ContextEvent(EID, "c", CheckpointBarrier("x")), 5, 5, LIMITS)
    assert outcome.status is Status.REJECTED and new is existing
    fenced = ContextEvent(EID, "c", Put(b"{}"), None, Fence("lock", 1))
    new, outcome = apply(existing, fenced, 5, 5, LIMITS, fence_floor=2)
    assert outcome.status is Status.FENCED and new is existing
    new, outcome = apply(existing, fenced, 5, 5, LIMITS, fence_floor=1)
    assert outcome.status is Status.APPLIED and new is not existing


def patch(body: bytes, fmt: PatchFormat = PatchFormat.JSON_PATCH, **kw: object) -> ContextEvent:
    return ContextEvent(EID, "c", Patch(fmt, body, **kw))  # type: ignore[arg-type]


def test_json_patch_and_merge_patch_apply_and_raise_the_version() -> None:
    record, _ = apply(None, put(b'{"m":[1],"k":{"a":1}}'), 0, 10, LIMITS)
    record, outcome = apply(record, patch(b'[{"op":"add","path":"/m/-","value":2}]'), 1, 11, LIMITS)
    assert outcome.status is Status.APPLIED and outcome.kind is ChangeKind.PATCH
    assert record is not None and record.doc == b'{"k":{"a":1},"m":[1,2]}' and record.version == 2
    merge = patch(b'{"k":{"a":null,"b":2}}', PatchFormat.MERGE_PATCH)
    record, outcome = apply(record, merge, 2, 12, LIMITS)
    assert record is not None and record.doc == b'{"k":{"b":2},"m":[1,2]}'
    assert record.checksum == checksum(record.doc)


def test_an_invalid_patch_changes_nothing() -> None:
    record, _ = apply(None, put(b'{"a":1}'), 0, 10, LIMITS)
    for body in (
        b'[{"op":"add","path":"/b","value":1},{"op":"remove","path":"/zz"}]',
        b'[{"op":"test","path":"/a","value":2}]',
        b'[{"op":"launch","path":"/a"}]',
        b'[{"op":"replace","path":"","value":[1]}]',
        b'{"not":"a list"}',
        b"not json",
    ):
        new, outcome = apply(record, patch(body), 1, 11, LIMITS)
        assert outcome.status is Status.REJECTED and new is record, body
    new, outcome = apply(record, patch(b"[1]", PatchFormat.MERGE_PATCH), 1, 11, LIMITS)
    assert outcome.status is Status.REJECTED and new is record


def test_a_patch_with_a_wrong_expected_checksum_is_rejected() -> None:
    record, _ = apply(None, put(b'{"a":1}'), 0, 10, LIMITS)
    body = b'[{"op":"replace","path":"/a","value":2}]'
    right = checksum(b'{"a":2}')
    new, outcome = apply(record, patch(body, expected_checksum=right), 1, 11, LIMITS)
    assert outcome.status is Status.APPLIED
    new, outcome = apply(record, patch(body, expected_checksum=bytes(8)), 1, 11, LIMITS)
    assert outcome.status is Status.REJECTED and new is record
    assert "checksum" in (outcome.reason or "")


def test_patch_and_touch_set_keep_or_clear_the_ttl() -> None:
    record, _ = apply(None, put(ttl=1000), 0, 10, LIMITS)
    assert record is not None and record.expires_at_ms == 1010
    kept, _ = apply(record, patch(b"[]"), 1, 20, LIMITS)
    assert kept is not None and kept.expires_at_ms == 1010
    longer, _ = apply(record, patch(b"[]", ttl_ms=5000), 1, 20, LIMITS)
    assert longer is not None and longer.expires_at_ms == 5020
    cleared, _ = apply(record, patch(b"[]", clear_ttl=True), 1, 20, LIMITS)
    assert cleared is not None and cleared.expires_at_ms is None
    both, outcome = apply(record, patch(b"[]", ttl_ms=5, clear_ttl=True), 1, 20, LIMITS)
    assert outcome.status is Status.REJECTED and both is record
    touched, outcome = apply(record, ContextEvent(EID, "c", Touch(100)), 2, 30, LIMITS)
    assert outcome.kind is ChangeKind.TOUCH
    assert touched is not None and touched.expires_at_ms == 130 and touched.doc == record.doc
    persisted, _ = apply(record, ContextEvent(EID, "c", Touch(None)), 2, 30, LIMITS)
    assert persisted is not None and persisted.expires_at_ms is None and persisted.version == 2
    gone, outcome = apply(record, ContextEvent(EID, "c", Touch(100)), 2, 2000, LIMITS)
    assert outcome.status is Status.REJECTED and gone is record  # expired: not found


def test_expire_applies_only_to_its_version_once_expired() -> None:
    record, _ = apply(None, put(ttl=100), 0, 10, LIMITS)
    assert record is not None
    early, outcome = apply(record, ContextEvent(EID, "c", Expire(1)), 1, 50, LIMITS)
    assert outcome.status is Status.REJECTED and early is record
    _, outcome = apply(record, ContextEvent(EID, "c", Expire(7)), 1, 500, LIMITS)
    assert outcome.status is Status.REJECTED
    gone, outcome = apply(record, ContextEvent(EID, "c", Expire(1)), 1, 500, LIMITS)
    assert outcome.kind is ChangeKind.EXPIRE and gone is not None and gone.doc is None


def test_documents_nested_past_the_limit_are_rejected() -> None:
    limits = Limits(max_document_bytes=10_000, max_depth=8)
    shallow = b'{"a":' + b"[" * 6 + b"]" * 6 + b"}"
    deep = b'{"a":' + b"[" * 8 + b"]" * 8 + b"}"
    assert apply(None, put(shallow), 0, 0, limits)[1].status is Status.APPLIED
    assert apply(None, put(deep), 0, 0, limits)[1].status is Status.REJECTED
    very_deep = b'{"a":' + b"[" * 300 + b"]" * 300 + b"}"  # past orjson's own encoder limit
    big = Limits(max_document_bytes=10_000, max_depth=1000)
    assert apply(None, put(very_deep), 0, 0, big)[1].status is Status.REJECTED


ANY_OP = st.one_of(
    st.builds(
        Put,
        st.binary(max_size=40) | st.sampled_from([b"{}", b'{"x":1}']),
        st.none() | st.integers(-5, 10**15),
    ),
    st.just(Delete()),
    st.builds(Patch, st.sampled_from(PatchFormat), st.binary(max_size=20)),
    st.builds(Touch, st.none() | st.integers()),
    st.builds(Expire, st.integers(-(2**63), 2**63 - 1)),
)
ANY_EVENT = st.builds(
    ContextEvent,
    st.just(EID),
    st.just("c"),
    ANY_OP,
    st.none() | st.integers(-3, 5),
    st.none() | st.builds(Fence, st.text(max_size=3), st.integers()),
)


@given(st.lists(ANY_EVENT, max_size=30), st.integers(0, 2**40))
@settings(max_examples=300)
def test_apply_never_raises_and_rejections_never_change_the_record(
    events: list[ContextEvent], t0: int
) -> None:
    record: ContextRecord | None = None
    version = 0
    for offset, event in enumerate(events):
        new, outcome = apply(record, event, offset, t0 + offset, LIMITS)
        if outcome.status is Status.APPLIED:
            assert new is not None and new.version == version + 1
            version = new.version
        else:
            assert new is record
        record = new


@given(st.lists(ANY_EVENT, max_size=20), st.data())
@settings(max_examples=100)
def test_the_fold_depends_on_the_log_only(events: list[ContextEvent], data: st.DataObject) -> None:
    """A replay after a restart reads the record back from the store between two events:
    folding through the stored form (at points Hypothesis picks) gives the same record and
    the same outcomes as folding in one go, so nothing outside the log and the stored record
    (an object's identity, a cache, a field the store drops) decides an outcome."""
    at_once = fold(events)
    record: ContextRecord | None = None
    statuses = []
    stops = data.draw(st.sets(st.integers(0, max(len(events) - 1, 0))))
    for offset, event in enumerate(events):
        if offset in stops and record is not None:
            record = decode_record(encode_record(record))
        record, outcome = apply(record, event, offset, 1000 + offset, LIMITS)
        statuses.append(outcome.status)
    assert (record, statuses) == at_once


def test_a_patch_nested_past_the_limit_is_rejected_before_it_runs() -> None:
    """Applying recurses into values: the depth is bounded first, so Python's own recursion
    limit (which depends on the caller's stack) never decides an outcome."""
    limits = Limits(max_document_bytes=1 << 20, max_depth=8)
    record, _ = apply(None, put(b'{"a":1}'), 0, 10, limits)
    value = b"[" * 20 + b"]" * 20
    body = b'[{"op":"add","path":"/x","value":' + value + b"}]"
    new, outcome = apply(record, patch(body), 1, 11, limits)
    assert outcome.status is Status.REJECTED and new is record
