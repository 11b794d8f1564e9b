"""``_fastjson.diff_documents``: the JSON Patch between two canonical documents, found on
their bytes. Whatever it returns turns the old document into exactly the new one (as
canonical JSON: 1 and 1.0, true and 1 are different), through the general path and through
the native one; for generated pairs of documents, one derived from the other."""

from __future__ import annotations

import copy
import json
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from lukhas_context.schemas.patch import apply_json_patch

try:
    from lukhas_context.schemas import _fastjson as fastjson
except ImportError:  # built without a C compiler, or switched off (LUKHAS_TEST_PURE_PYTHON)
    fastjson = None  # type: ignore[assignment]

pytestmark = pytest.mark.skipif(fastjson is None, reason="the native extension is not built")

SORT = orjson.OPT_SORT_KEYS
KEYS = st.sampled_from(["a", "b", "messages", "-", "0", "", "é", "a/b", "x~y", "z"])
SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=5)
)
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(KEYS, inner, max_size=3),
    max_leaves=10,
)


@st.composite
def pairs(draw: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """A document and another made from it by a few edits: members set, added or removed,
    items appended, changed or dropped, numbers turned into their float or bool twins."""
    old = draw(st.dictionaries(KEYS, VALUES, max_size=5))
    new = copy.deepcopy(old)
    for _ in range(draw(st.integers(0, 4))):
        node: Any = new
        while isinstance(node, (dict, list)) and node and draw(st.booleans()):
            node = (
                node[draw(st.sampled_from(sorted(node)))]
                if isinstance(node, dict)
                else (node[draw(st.integers(0, len(node) - 1))])
            )
        if isinstance(node, dict):
            key = draw(KEYS)
            if key in node and draw(st.booleans()):
                del node[key]
            else:
                node[key] = draw(VALUES)
        elif isinstance(node, list):
            edit = draw(st.integers(0, 3))
            if edit == 0 or not node:
                node.extend(draw(st.lists(VALUES, max_size=3)))
            elif edit == 1:
                node.pop()
            elif edit == 2:
                i = draw(st.integers(0, len(node) - 1))
                twin = _twin(node[i])
                node[i] = twin if twin is not node[i] and draw(st.booleans()) else draw(VALUES)
            else:
                node.insert(0, draw(VALUES))
    return old, new


def _twin(item: Any) -> Any:
    """A value equal to ``item`` in Python but not as canonical JSON (1, 1.0 and true)."""
    if type(item) is bool:
        return int(item)
    if type(item) is int and abs(item) < 2**53:
        return float(item)
    if type(item) is float and item.is_integer() and abs(item) < 2**53:
        return int(item)
    return item


def _check(old: dict[str, Any], new: dict[str, Any]) -> list[dict[str, Any]] | None:
    a, b = orjson.dumps(old, option=SORT), orjson.dumps(new, option=SORT)
    ops = fastjson.diff_documents(a, b)
    if ops is not None:
        assert orjson.dumps(apply_json_patch(old, ops), option=SORT) == b, ops
        spliced = fastjson.patch_document(a, orjson.dumps(ops), 64, 1 << 20, 1000, 1 << 21)
        assert spliced is None or spliced == b
        if a == b:
            assert ops == []
    return ops


@given(pairs())
@settings(max_examples=2000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@example(({"a": 1}, {"a": 1.0}))
@example(({"a": [1, True]}, {"a": [True, 1]}))
@example(({"a": -0.0}, {"a": 0.0}))
@example(({"a/b": {"x~y": [1]}}, {"a/b": {"x~y": [1, 2]}}))
def test_the_diff_turns_the_old_document_into_the_new_one(
    pair: tuple[dict[str, Any], dict[str, Any]],
) -> None:
    _check(*pair)


def test_an_appended_message_is_one_add() -> None:
    old = {"agent": "a", "messages": [{"role": "user", "text": f"t{i}"} for i in range(50)]}
    new = copy.deepcopy(old)
    new["messages"].append({"role": "agent", "text": "hi"})
    assert _check(old, new) == [
        {"op": "add", "path": "/messages/-", "value": {"role": "agent", "text": "hi"}}
    ]
    new["messages"].append({"role": "user", "text": "and"})
    assert _check(old, new) == [
        {"op": "add", "path": "/messages/-", "value": {"role": "agent", "text": "hi"}},
        {"op": "add", "path": "/messages/-", "value": {"role": "user", "text": "and"}},
    ]


def test_what_the_diff_leaves_to_the_general_one() -> None:
    escaped = orjson.dumps({'q"t': 1})
    assert fastjson.diff_documents(escaped, orjson.dumps({'q"t': 2})) is None
    assert fastjson.diff_documents(b"{}", b"[]") is None
    many = orjson.dumps({f"k{i}": i for i in range(100)}, option=SORT)
    assert fastjson.diff_documents(b"{}", many) is None  # over 64 operations
    assert fastjson.diff_documents(b"{}", many, 1000) is not None


@given(pairs(), st.randoms(use_true_random=False), st.booleans())
@settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@example(({"b": 1, "a": 1}, {"a": 1, "b": 1}), None, False)
def test_bytes_that_are_not_canonical_never_give_a_wrong_delta(
    pair: tuple[dict[str, Any], dict[str, Any]], rnd: Any, spaced: bool
) -> None:
    """Forged or foreign change records may hold JSON in any key order or spacing, or
    with duplicate members: the diff gives up, or its delta still makes the new value."""

    def shuffled(value: Any) -> Any:
        if isinstance(value, dict):
            items = list(value.items())
            if rnd is not None:
                rnd.shuffle(items)
            return {k: shuffled(v) for k, v in items}
        if isinstance(value, list):
            return [shuffled(v) for v in value]
        return value

    old, new = pair
    separators = (", ", ": ") if spaced else (",", ":")
    raw_old = json.dumps(shuffled(old), separators=separators, ensure_ascii=False).encode()
    raw_new = json.dumps(shuffled(new), separators=separators, ensure_ascii=False).encode()
    try:
        ops = fastjson.diff_documents(raw_old, raw_new)
    except orjson.JSONDecodeError:
        return  # a value that is not JSON as orjson reads it (Python's json writes Infinity)
    if ops is not None:
        made = apply_json_patch(orjson.loads(raw_old), ops)
        assert orjson.dumps(made, option=SORT) == orjson.dumps(orjson.loads(raw_new), option=SORT)
