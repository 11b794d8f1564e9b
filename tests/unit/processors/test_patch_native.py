"""The native JSON Patch path (``schemas._fastjson.patch_document``) splices the canonical document;
whatever it returns, the general path (``fold.apply``) returns too, byte for byte, and what it
does not take (None) the general path decides. Generated documents and patches, hostile ones
included (deep values, escapes in keys, out-of-range indexes, bounds at their edges)."""

from __future__ import annotations

import json
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from lukhas_context.processors import round as rnd
from lukhas_context.processors.fold import Limits, Status, apply
from lukhas_context.schemas.event import ContextEvent, Patch, PatchFormat
from lukhas_context.state.record import ContextRecord

pytestmark = pytest.mark.skipif(rnd.native_fold is None, reason="the native extension is not built")

if rnd.native_fold is not None:
    from lukhas_context.schemas._fastjson import patch_document

SORT = orjson.OPT_SORT_KEYS
KEYS = st.sampled_from(["a", "b", "messages", "-", "0", "", "é", "a/b", "x~y", 'q"t', "z\n"])
SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=6)
)
VALUES = st.recursive(
    SCALARS,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(KEYS | st.text(max_size=3), inner, max_size=3)
    ),
    max_leaves=8,
)
DOCS = st.dictionaries(KEYS, VALUES, max_size=5)


def _escape(token: str) -> str:
    return token.replace("~", "~0").replace("/", "~1")


def _paths(doc: Any, prefix: str = "") -> list[str]:
    """Every pointer to a value of ``doc``, and one past the end of each array."""
    found = [prefix] if prefix else []
    if isinstance(doc, dict):
        for key, child in doc.items():
            found += _paths(child, f"{prefix}/{_escape(key)}")
    elif isinstance(doc, list):
        for i, child in enumerate(doc):
            found += _paths(child, f"{prefix}/{i}")
        found += [f"{prefix}/-", f"{prefix}/{len(doc)}", f"{prefix}/{len(doc) + 1}"]
    return found


@st.composite
def cases(draw: Any) -> tuple[bytes, bytes]:
    doc = draw(DOCS)
    pointers = [*_paths(doc), "/new", "/a/b/c", "/messages/-", "/-", "/01", "/", "", "/é"]
    ops = []
    for _ in range(draw(st.integers(0, 4))):
        name = draw(
            st.sampled_from(["add", "add", "replace", "remove", "test", "move", "copy", "nope"])
        )
        op: dict[str, Any] = {"op": name, "path": draw(st.sampled_from(pointers))}
        if name in ("add", "replace", "test", "nope"):
            op["value"] = draw(VALUES)
            if name == "test" and draw(st.booleans()):
                op["value"] = _at(doc, op["path"])
        if name in ("move", "copy"):
            op["from"] = draw(st.sampled_from(pointers))
        if draw(st.integers(0, 20)) == 0:
            del op[draw(st.sampled_from(sorted(op)))]
        ops.append(op)
    text = json.dumps(ops, separators=draw(st.sampled_from([(",", ":"), (", ", ": ")])))
    return orjson.dumps(doc, option=SORT), text.encode()


def _at(doc: Any, pointer: str) -> Any:
    node = doc
    for token in pointer.split("/")[1:]:
        token = token.replace("~1", "/").replace("~0", "~")
        try:
            node = node[token] if isinstance(node, dict) else node[int(token)]
        except (KeyError, IndexError, ValueError, TypeError):
            return None
    return node


def _general(doc: bytes, patch: bytes, limits: Limits) -> tuple[Status, bytes | None]:
    record = ContextRecord(3, doc, b"\0" * 8, None, 0, 0)
    event = ContextEvent(bytes(16), "k", Patch(PatchFormat.JSON_PATCH, patch))
    new, outcome = apply(record, event, 1, 1, limits)
    return outcome.status, None if new is None else new.doc


def _same(doc: bytes, patch: bytes, limits: Limits) -> bytes | None:
    fast = patch_document(doc, patch, limits.max_depth, limits.max_document_bytes,
                          limits.max_patch_operations, limits.max_patch_work)  # fmt: skip
    status, general = _general(doc, patch, limits)
    if fast is not None:
        assert status is Status.APPLIED, (doc, patch, status)
        assert fast == general
    return fast


@given(cases())
@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@example((b'{"a":[1,2]}', b'[{"op":"remove","path":"/a/1"},{"op":"add","path":"/a/0","value":0}]'))
@example((b'{"a":1.0}', b'[{"op":"test","path":"/a","value":1}]'))
@example((b'{"q\\"t":1}', b'[{"op":"add","path":"/r","value":2}]'))
def test_the_native_patch_equals_the_general_path(case: tuple[bytes, bytes]) -> None:
    _same(*case, Limits())


@given(cases())
@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_the_native_patch_keeps_the_bounds(case: tuple[bytes, bytes]) -> None:
    """Tight limits: every bound (depth, size, operations) is crossed by some case."""
    _same(
        *case, Limits(max_document_bytes=64, max_depth=3, max_patch_operations=2, max_patch_work=40)
    )


def test_the_common_patches_take_the_native_path() -> None:
    """Guards against a path that hands everything to the general one."""
    conversation = {
        "agent": "a-1",
        "messages": [{"role": "user", "text": f"t{i}"} for i in range(50)],
    }
    doc = orjson.dumps(conversation, option=SORT)
    taken = [
        [{"op": "add", "path": "/messages/-", "value": {"role": "agent", "text": "hi"}}],
        [{"op": "add", "path": "/messages/50", "value": {"role": "agent", "text": "hi"}}],
        [{"op": "replace", "path": "/messages/3/text", "value": "edited"}],
        [{"op": "remove", "path": "/messages/49"}, {"op": "remove", "path": "/messages/0"}],
        [{"op": "add", "path": "/summary", "value": "short"}, {"op": "remove", "path": "/agent"}],
        [
            {"op": "test", "path": "/agent", "value": "a-1"},
            {"op": "add", "path": "/a", "value": {}},
        ],
        [],
    ]
    for ops in taken:
        assert _same(doc, orjson.dumps(ops), Limits()) is not None, ops


@pytest.mark.parametrize(
    "ops",
    [
        [{"op": "move", "from": "/agent", "path": "/b"}],  # not spliced
        [{"op": "add", "path": "/messages/-/x", "value": 1}],  # '-' names no member
        [{"op": "add", "path": "/messages/01", "value": 1}],  # a leading zero
        [{"op": "replace", "path": "/missing", "value": 1}],
        [{"op": "remove", "path": "/messages/2"}],  # past the end
        [{"op": "test", "path": "/agent", "value": "other"}],
        [{"op": "add", "path": "/x~1y", "value": 1}],  # an escape: the general path
        [{"op": "add", "path": "", "value": {}}],  # the whole document
        [{"op": "add", "path": "/deep", "value": [[[[[[[[1]]]]]]]]}],  # past max_depth 8
        [{"op": "add", "path": "/big", "value": "x" * 300}],  # past 256 bytes
    ],
)
def test_what_the_native_patch_leaves_to_the_general_path(ops: list[Any]) -> None:
    doc = orjson.dumps({"agent": "a", "messages": [1, 2]}, option=SORT)
    limits = Limits(max_document_bytes=256, max_depth=8)
    assert _same(doc, orjson.dumps(ops), limits) is None


APPEND_PATHS = ["/messages/-", "/notes/-", "/messages/0/parts/-", "/messages/-/x", "/agent/-"]


@st.composite
def conversations(draw: Any) -> tuple[bytes, list[bytes], Limits]:
    """A document with arrays, then a run of patches that are mostly one append to an array
    (the hint's case) and sometimes anything else (which must clear it), under limits that
    the appends reach: depth, size."""
    doc = {"agent": "a", "messages": [{"parts": []}], "notes": draw(st.lists(VALUES, max_size=2))}
    patches = []
    for _ in range(draw(st.integers(1, 25))):
        kind = draw(st.integers(0, 9))
        if kind < 7:
            path = draw(st.sampled_from(APPEND_PATHS))
            ops = [{"op": "add", "path": path, "value": draw(VALUES)}]
        elif kind == 7:
            ops = [{"op": "remove", "path": draw(st.sampled_from(["/messages/0", "/notes/0"]))}]
        elif kind == 8:
            ops = [{"op": "add", "path": "/messages/-", "value": draw(VALUES)},
                   {"op": "add", "path": "/notes/-", "value": draw(VALUES)}]  # fmt: skip
        else:
            ops = [{"op": "replace", "path": "/agent", "value": draw(VALUES)}]
        patches.append(orjson.dumps(ops))
    limits = draw(st.sampled_from([Limits(), Limits(max_document_bytes=400, max_depth=4)]))
    return orjson.dumps(doc, option=SORT), patches, limits


@given(conversations())
@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_appends_through_the_hint_equal_the_general_path(
    case: tuple[bytes, list[bytes], Limits],
) -> None:
    """A run of patches on one document with one hint, as the fold keeps it per context: each
    step's result is the general path's, whether it spliced at the remembered end, scanned, or
    left the patch to the general path (whose document the next step starts from)."""
    doc, patches, limits = case
    hint: list[Any] = [None, None, 0]
    for patch in patches:
        fast = patch_document(doc, patch, limits.max_depth, limits.max_document_bytes,
                              limits.max_patch_operations, limits.max_patch_work, hint)  # fmt: skip
        status, general = _general(doc, patch, limits)
        if fast is not None:
            assert status is Status.APPLIED and fast == general, (doc, patch)
        if status is Status.APPLIED:
            assert general is not None
            doc = fast if fast is not None else general


def test_a_conversation_appends_at_the_remembered_end() -> None:
    """Guards the hint against never being used: 200 appends on a growing conversation, each
    after the first spliced at the end the one before left (no scan), equal to the general
    path's bytes."""
    doc = orjson.dumps({"agent": "a", "messages": []}, option=SORT)
    hint: list[Any] = [None, None, 0]
    for i in range(200):
        patch = orjson.dumps([{"op": "add", "path": "/messages/-", "value": {"n": i}}])
        remembered = hint[0] is doc
        fast = patch_document(doc, patch, 64, 1 << 20, 100, 1 << 20, hint)
        assert fast is not None and fast == _general(doc, patch, Limits())[1]
        assert hint[0] is fast and fast[hint[2]] == ord("]")
        assert remembered == (i > 0)
        doc = fast
