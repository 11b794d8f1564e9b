"""The native fold takes a Put's document as it is when ``is_canonical_object`` says orjson
would write it the same: whatever it accepts must round-trip through orjson byte for byte, and
what orjson writes (within what it decides: no floats, integers under 19 digits) it accepts.
Generated documents, then mutated ones (keys swapped, whitespace, escapes, bytes flipped, cut
short, invalid UTF-8, surrogates), so a forged document can never skip the canonical form."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from lukhas_context.processors import round as rnd

pytestmark = pytest.mark.skipif(rnd.native_fold is None, reason="the native extension is not built")

if rnd.native_fold is not None:
    from lukhas_context.processors._fastfold import is_canonical_object

SORT = orjson.OPT_SORT_KEYS
SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(-(10**18) + 1, 10**18 - 1)
    | st.text(max_size=6)
    | st.sampled_from(["\x00", "\x7f", "\u2028", "\U0001f600", "\ufffd", '"\\/', "\x08\t\n\f\r"])
)
KEYS = st.text(max_size=4) | st.sampled_from(["a", "ab", "b", "é", "\uffff", "\U0001f600", ""])
#: Keys orjson writes without an escape (a key with one is left to orjson: its order is the
#: decoded one's).
PLAIN_KEYS = KEYS.filter(lambda k: not any(c in '"\\' or c < " " for c in k))
PLAIN_VALUES = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(PLAIN_KEYS, inner, max_size=4),
    max_leaves=12,
)
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(KEYS, inner, max_size=4),
    max_leaves=12,
)


def orjson_canonical(doc: bytes) -> bytes | None:
    try:
        obj = orjson.loads(doc)
    except orjson.JSONDecodeError:
        return None
    return orjson.dumps(obj, option=SORT) if type(obj) is dict else None


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(PLAIN_KEYS, PLAIN_VALUES, max_size=5))
def test_what_orjson_writes_is_taken_as_it_is(doc: dict[str, Any]) -> None:
    raw = orjson.dumps(doc, option=SORT)
    assert is_canonical_object(raw)


MUTATIONS = st.sampled_from(["flip", "insert", "delete", "space", "cut", "swap"])


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(KEYS, VALUES, min_size=1, max_size=5), MUTATIONS, st.data())
@example({"a": 1, "b": 2}, "swap", None)
def test_a_forged_document_is_never_taken_for_canonical(
    doc: dict[str, Any], how: str, data: st.DataObject | None
) -> None:
    raw = bytearray(orjson.dumps(doc, option=SORT))
    if data is None:  # the example: keys out of order
        raw = bytearray(b'{"b":2,"a":1}')
    else:
        at = data.draw(st.integers(0, len(raw) - 1))
        byte = data.draw(st.sampled_from(
            [0x20, 0x22, 0x2C, 0x2D, 0x30, 0x31, 0x3A, 0x5C, 0x5B, 0x5D, 0x7B, 0x7D, 0x65, 0x2E,
             0x75, 0x80, 0xBF, 0xC0, 0xED, 0xA0, 0xF4, 0xF5, 0xFF, 0x00, 0x0A]
        ))  # fmt: skip
        if how == "flip":
            raw[at] = byte
        elif how == "insert":
            raw.insert(at, byte)
        elif how == "delete":
            del raw[at]
        elif how == "space":
            raw.insert(at, 0x20)
        elif how == "cut":
            raw = raw[:at]
        elif how == "swap" and len(doc) > 1:
            keys = list(doc)
            raw = bytearray(orjson.dumps(dict(zip(reversed(keys), reversed(list(doc.values())),
                                                  strict=True))))  # fmt: skip
    forged = bytes(raw)
    if is_canonical_object(forged):
        assert orjson_canonical(forged) == forged


@pytest.mark.parametrize(
    "doc",
    [
        b'{"a":1.5}', b'{"a":1e3}', b'{"a":-0}', b'{"a":01}', b'{"a":1234567890123456789}',
        b'{"a":"\\u00e9"}', b'{"a":"\\u000a"}', b'{"a":"\\u001F"}', b'{"\\n":1}',
        b'{"a":"\xed\xa0\x80"}', b'{"a":"\xc0\x80"}', b'{"a":"\xf4\x90\x80\x80"}',
        b'{"a":1,"a":2}', b'{"b":1,"a":2}', b'{ "a":1}', b"[1]", b'"a"', b"{}x", b"",
        b'{"a":tru}', b'{"a":[1,]}', b'{"a":[1 ]}', b'{"a":{}}}',
    ],
)  # fmt: skip
def test_what_it_does_not_decide_goes_to_orjson(doc: bytes) -> None:
    assert not is_canonical_object(doc)


@pytest.mark.parametrize(
    "doc",
    [
        b"{}", b'{"a":0,"b":-1,"c":123456789012345678}', b'{"":[],"a":{"b":[true,false,null]}}',
        b'{"a":"\\u0001\\"\\\\\\n"}', b'{"a":"\xe2\x80\xa8\x7f\xf0\x9f\x98\x80"}',
        b'{"\xef\xbf\xbf":2,"\xf0\x9f\x98\x80":1}',
    ],
)  # fmt: skip
def test_canonical_documents_are_taken(doc: bytes) -> None:
    assert orjson_canonical(doc) == doc
    assert is_canonical_object(doc)


def test_depth_is_bounded() -> None:
    deep = b'{"a":' * 70 + b"1" + b"}" * 70
    assert not is_canonical_object(deep)  # deeper than its bound: orjson and the fold decide
    assert is_canonical_object(b'{"a":' * 10 + b"1" + b"}" * 10, 64)
