"""Hostile but well-formed events (RELIABILITY.md row 15): patches that amplify size or build
deep intermediate values, big integers. The fold must reject them with a reason, by a bound
checked before the work, and decide alike at any caller stack depth, on any machine."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from typing import Any, TypeVar

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lukhas_context.processors.fold import Limits, Outcome, Status, apply
from lukhas_context.schemas.event import ContextEvent, Patch, PatchFormat, Put
from lukhas_context.schemas.exceptions import PatchError
from lukhas_context.schemas.numbers import MAX_INT, MIN_INT, out_of_range_integer
from lukhas_context.schemas.patch import (
    PatchLimits,
    apply_json_patch,
    json_weight,
    validate_json_patch,
)
from lukhas_context.state.record import ContextRecord

T = TypeVar("T")
LIMITS = Limits()
EID = bytes(16)


def at_stack_depth(depth: int, fn: Callable[[], T]) -> T:
    """``fn()`` called ``depth`` Python frames deeper than here."""
    if depth <= 0:
        return fn()
    return at_stack_depth(depth - 1, fn)


def stack_depths() -> list[int]:
    """No extra frames, a few, and nearly all the frames the recursion limit leaves."""
    used = len(_frames())
    room = sys.getrecursionlimit() - used - 40
    return [0, 1, 10, 200, room]


def _frames() -> list[Any]:
    frame = sys._getframe()
    frames = []
    while frame is not None:
        frames.append(frame)
        frame = frame.f_back  # type: ignore[assignment]
    return frames


def record_of(doc: dict[str, Any], version: int = 1) -> ContextRecord:
    data = orjson.dumps(doc, option=orjson.OPT_SORT_KEYS)
    return ContextRecord(version, data, b"\0" * 8, None, 0, 0)


def patch_event(ops: Any, merge: bool = False) -> ContextEvent:
    fmt = PatchFormat.MERGE_PATCH if merge else PatchFormat.JSON_PATCH
    return ContextEvent(EID, "c", Patch(fmt, orjson.dumps(ops)))


def fold_patch(doc: dict[str, Any], ops: Any) -> tuple[ContextRecord | None, Outcome]:
    return apply(record_of(doc), patch_event(ops), 1, 1000, LIMITS)


def doubling(copies: int) -> list[dict[str, Any]]:
    """The attack of issue 9: each copy of the whole document doubles it."""
    return [{"op": "copy", "from": "", "path": f"/a{i}"} for i in range(copies)]


def deepening(levels: int, step: int = 60) -> list[dict[str, Any]]:
    """Adds, at the deepest point so far, a value ``step`` levels deep, until ``levels``, then
    copies the result (which recursed as deep as the value, from the caller's stack, before)."""
    ops: list[dict[str, Any]] = []
    path = ""
    built = 1
    while built < levels:
        value: Any = {}
        for _ in range(step - 1):
            value = {"k": value}
        ops.append({"op": "add", "path": path + "/k", "value": value})
        path += "/k" * step
        built += step
    ops.append({"op": "copy", "from": "/k", "path": "/z"})
    return ops


def moved_deeper(levels: int) -> list[dict[str, Any]]:
    """Builds depth with moves: a 60-deep value under /b moved again and again below /a."""
    ops: list[dict[str, Any]] = [{"op": "add", "path": "/a", "value": {}}]
    path = "/a"
    for i in range(levels // 60 + 1):
        value: Any = 0
        for _ in range(59):
            value = {"k": value}
        ops.append({"op": "add", "path": "/b", "value": value})
        ops.append({"op": "move", "from": "/b", "path": f"{path}/m{i}"})
        path += f"/m{i}" + "/k" * 58
    return ops


# ---- amplification ----


def test_thirty_copies_of_the_document_are_rejected_before_the_work() -> None:
    doc = {f"k{i}": "x" * 40 for i in range(30)}  # about 1.3 KB, as in the report
    record, outcome = fold_patch(doc, doubling(30))
    assert outcome.status is Status.REJECTED
    assert outcome.reason is not None
    assert "limit of one patch's work" in outcome.reason
    # Rejected at the copy that would pass 2 MiB (2**11 x 1.3 KB), not after building 2**30.
    assert outcome.reason.startswith("op 10 (copy)") or outcome.reason.startswith("op 11 (copy)")
    assert record is not None and record.doc == record_of(doc).doc


def test_copies_that_fit_the_work_are_applied() -> None:
    doc = {"m": ["x" * 10] * 10}
    record, outcome = fold_patch(doc, doubling(3))
    assert outcome.status is Status.APPLIED
    assert record is not None and len(orjson.loads(record.doc or b"")) == 4


def test_the_bounds_count_values_inserted_and_moved_deeper_too() -> None:
    limits = PatchLimits(max_operations=100, max_depth=64, max_work=1000)
    big = "y" * 600
    with pytest.raises(PatchError, match=r"op 1 \(add\): the patch would insert"):
        apply_json_patch({}, [{"op": "add", "path": "/a", "value": big}] * 2, limits)
    # A move to a shallower place costs nothing; one deeper re-checks the value's depth.
    doc = {"a": {"b": {"c": "z" * 600}}, "d": {}}
    apply_json_patch(doc, [{"op": "move", "from": "/a/b", "path": "/b"}] * 1, limits)
    ops = [
        {"op": "move", "from": "/a", "path": "/d/a"},
        {"op": "move", "from": "/d/a", "path": "/a"},
    ] * 2
    with pytest.raises(PatchError, match=r"op 2 \(move\): the patch would insert, copy or move"):
        apply_json_patch(doc, ops, limits)


def test_operation_count_is_bounded() -> None:
    ops = [{"op": "test", "path": "", "value": {}}] * 1001
    with pytest.raises(PatchError, match="1001 operations, over the limit of 1000"):
        validate_json_patch(ops)
    _, outcome = fold_patch({}, ops)
    assert outcome.status is Status.REJECTED
    assert outcome.reason == "the patch has 1001 operations, over the limit of 1000"


def test_json_weight_is_a_lower_bound_of_the_json_bytes() -> None:
    for value in (
        {},
        [],
        {"a": [1, 2.5, None, True, False, "x"], "": {"b": []}},
        ["é", "\n", {"k": -12345}],
        "plain",
    ):
        assert json_weight(value) <= len(json.dumps(value, separators=(",", ":")).encode())


# ---- depth of intermediate values ----


@pytest.mark.parametrize("levels", [65, 120, 240, 480, 495])
def test_deep_intermediate_values_are_rejected_at_the_op_that_builds_them(levels: int) -> None:
    for ops in (deepening(levels), moved_deeper(levels)):
        outcomes = {
            depth: at_stack_depth(depth, lambda ops=ops: fold_patch({}, ops))[1]
            for depth in stack_depths()
        }
        assert len(set(outcomes.values())) == 1, outcomes
        outcome = outcomes[0]
        assert outcome.status is Status.REJECTED
        assert outcome.reason is not None and "deeper than 64 levels" in outcome.reason


def test_the_depth_limit_holds_after_every_operation() -> None:
    value: Any = 0
    for _ in range(64):
        value = [value]
    # The final document would be shallow, but the first operation alone is too deep.
    ops = [{"op": "add", "path": "/x", "value": value}, {"op": "remove", "path": "/x"}]
    _, outcome = fold_patch({}, ops)
    assert outcome.status is Status.REJECTED
    assert (
        outcome.reason
        == "op 0 (add): the value would nest the document deeper than 64 levels at /x"
    )
    # Right at the limit is fine: the root object is level 1.
    value = 0
    for _ in range(63):
        value = [value]
    _, outcome = fold_patch({}, [{"op": "add", "path": "/x", "value": value}])
    assert outcome.status is Status.APPLIED


def test_copy_and_move_into_depth_are_checked() -> None:
    value: Any = 0
    for _ in range(40):
        value = {"k": value}
    doc = {"a": value, "b": value}
    deep_path = "/b" + "/k" * 30
    for op in ("copy", "move"):
        _, outcome = fold_patch(doc, [{"op": op, "from": "/a", "path": deep_path}])
        assert outcome.status is Status.REJECTED, op
        assert outcome.reason is not None and "deeper than 64 levels" in outcome.reason
    # Moving the same value somewhere no deeper is not re-checked and applies.
    _, outcome = fold_patch(doc, [{"op": "move", "from": "/a", "path": "/c"}])
    assert outcome.status is Status.APPLIED


def test_pointers_longer_than_a_document_can_nest_are_refused() -> None:
    with pytest.raises(PatchError, match="has 65 steps, deeper than 64 levels"):
        validate_json_patch([{"op": "remove", "path": "/a" * 65}])


# ---- the same at any stack depth ----

SCALARS = st.none() | st.booleans() | st.integers(-5, 5) | st.text(max_size=3)
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.sampled_from("abk"), inner),
    max_leaves=8,
)
POINTERS = st.lists(st.sampled_from(["a", "b", "k", "0", "1", "-"]), max_size=4).map(
    lambda parts: "".join("/" + p for p in parts)
)
OPS = st.one_of(
    st.fixed_dictionaries(
        {"op": st.sampled_from(["add", "replace", "test"]), "path": POINTERS, "value": VALUES}
    ),
    st.fixed_dictionaries({"op": st.just("remove"), "path": POINTERS}),
    st.fixed_dictionaries(
        {"op": st.sampled_from(["move", "copy"]), "from": POINTERS, "path": POINTERS}
    ),
)
HOSTILE = st.sampled_from(
    [doubling(30), deepening(300), moved_deeper(480), doubling(8) + deepening(120)]
)


@settings(max_examples=60, deadline=None)
@given(
    st.dictionaries(st.sampled_from("abk"), VALUES, max_size=3), st.lists(OPS, max_size=6) | HOSTILE
)
def test_outcomes_do_not_depend_on_the_callers_stack(doc: dict[str, Any], ops: Any) -> None:
    results = {
        depth: at_stack_depth(depth, lambda: fold_patch(doc, ops)) for depth in stack_depths()
    }
    first = results[0]
    for depth, (record, outcome) in results.items():
        assert outcome == first[1], depth
        assert (record.doc if record else None) == (first[0].doc if first[0] else None), depth


# ---- numbers ----


def test_big_integers_are_refused_not_rounded() -> None:
    for literal in (
        b"123456789012345678901234567890",
        b"18446744073709551616",
        b"-9223372036854775809",
        b"1" * 300,
    ):
        doc = b'{"a":' + literal + b"}"
        _, outcome = apply(None, ContextEvent(EID, "c", Put(doc)), 0, 1, LIMITS)
        assert outcome.status is Status.REJECTED, literal[:30]
        assert outcome.reason is not None and "outside the range" in outcome.reason
        patch = b'[{"op":"add","path":"/a","value":' + literal + b"}]"
        event = ContextEvent(EID, "c", Patch(PatchFormat.JSON_PATCH, patch))
        _, outcome = apply(record_of({}), event, 1, 1, LIMITS)
        assert outcome.status is Status.REJECTED
        assert outcome.reason is not None and "outside the range" in outcome.reason


def test_patches_nested_past_any_document_are_refused_first() -> None:
    value: Any = 0
    for _ in range(70):
        value = [value]
    _, outcome = fold_patch({}, [{"op": "add", "path": "/x", "value": value}])
    assert outcome.status is Status.REJECTED
    assert outcome.reason == (
        "the patch nests deeper than 66 levels (a value in it must fit in a document of 64)"
    )


def test_integers_of_any_length_are_judged_without_converting_them() -> None:
    reason = out_of_range_integer(b"[" + b"9" * 100_000 + b"]")
    assert reason is not None and "(100000 digits)" in reason
    assert out_of_range_integer(b'["' + b"9" * 100_000 + b'"]') is None


def test_the_edges_of_the_range_are_kept_exactly() -> None:
    for literal in (str(MAX_INT), str(MIN_INT), "-0", "12345678901234567890.5", "1e300"):
        doc = ('{"a":' + literal + ',"s":"123456789012345678901234567890"}').encode()
        record, outcome = apply(None, ContextEvent(EID, "c", Put(doc)), 0, 1, LIMITS)
        assert outcome.status is Status.APPLIED, literal
        assert record is not None and record.doc is not None
        assert orjson.loads(record.doc)["a"] == json.loads(literal)
    record, _ = apply(None, ContextEvent(EID, "c", Put(b'{"a":' + str(MAX_INT).encode() + b"}")),
                      0, 1, LIMITS)  # fmt: skip
    assert record is not None and str(MAX_INT).encode() in (record.doc or b"")


@settings(max_examples=300, deadline=None)
@given(
    st.recursive(
        st.integers() | st.text(alphabet="0123456789-.e", max_size=25) | st.floats(allow_nan=False,
        allow_infinity=False),
        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=22), inner),
        max_leaves=6,
    )
)  # fmt: skip
def test_out_of_range_integer_matches_the_values(value: Any) -> None:
    text = json.dumps(value)
    assert (out_of_range_integer(text) is None) == all(
        MIN_INT <= i <= MAX_INT for i in _integers(value)
    )


def _integers(value: Any) -> list[int]:
    found: list[int] = []
    pending = [value]
    while pending:
        node = pending.pop()
        if isinstance(node, dict):
            pending.extend(node.values())
        elif isinstance(node, list):
            pending.extend(node)
        elif isinstance(node, int) and not isinstance(node, bool):
            found.append(node)
    return found
