"""The patch algebra: RFC 6902 and RFC 7386 examples, every error as ``PatchError``, inputs
never changed, and properties by Hypothesis (round trips, garbage patches, a differential check
against jsonpatch's own copying apply, merge patches against a reference, nesting depth)."""

from __future__ import annotations

import copy
from typing import Any

import jsonpatch
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lukhas_context.schemas.exceptions import LukhasError, NestingTooDeepError, PatchError
from lukhas_context.schemas.patch import (
    apply_json_patch,
    apply_merge_patch,
    check_depth,
    make_json_patch,
)


def strict(value: Any) -> bytes:
    """Canonical JSON: unlike ``==``, it tells 1, 1.0 and true apart."""
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS)


def patched(doc: dict[str, Any], patch: Any) -> dict[str, Any]:
    """``apply_json_patch``, asserting that neither argument changed."""
    before_doc, before_patch = copy.deepcopy(doc), copy.deepcopy(patch)
    try:
        return apply_json_patch(doc, patch)
    finally:
        assert strict(doc) == strict(before_doc)
        assert strict(patch) == strict(before_patch)


def rejected(doc: dict[str, Any], patch: Any) -> str:
    """The reason ``apply_json_patch`` gives, asserting that neither argument changed."""
    with pytest.raises(PatchError) as info:
        patched(doc, patch)
    return info.value.reason


# RFC 6902, Appendix A: (section, document, patch, result or None for an error).
RFC6902_EXAMPLES: list[tuple[str, dict[str, Any], list[Any], dict[str, Any] | None]] = [
    (
        "A.1",
        {"foo": "bar"},
        [{"op": "add", "path": "/baz", "value": "qux"}],
        {"baz": "qux", "foo": "bar"},
    ),
    (
        "A.2",
        {"foo": ["bar", "baz"]},
        [{"op": "add", "path": "/foo/1", "value": "qux"}],
        {"foo": ["bar", "qux", "baz"]},
    ),
    ("A.3", {"baz": "qux", "foo": "bar"}, [{"op": "remove", "path": "/baz"}], {"foo": "bar"}),
    (
        "A.4",
        {"foo": ["bar", "qux", "baz"]},
        [{"op": "remove", "path": "/foo/1"}],
        {"foo": ["bar", "baz"]},
    ),
    (
        "A.5",
        {"baz": "qux", "foo": "bar"},
        [{"op": "replace", "path": "/baz", "value": "boo"}],
        {"baz": "boo", "foo": "bar"},
    ),
    (
        "A.6",
        {"foo": {"bar": "baz", "waldo": "fred"}, "qux": {"corge": "grault"}},
        [{"op": "move", "from": "/foo/waldo", "path": "/qux/thud"}],
        {"foo": {"bar": "baz"}, "qux": {"corge": "grault", "thud": "fred"}},
    ),
    (
        "A.7",
        {"foo": ["all", "grass", "cows", "eat"]},
        [{"op": "move", "from": "/foo/1", "path": "/foo/3"}],
        {"foo": ["all", "cows", "eat", "grass"]},
    ),
    (
        "A.8",
        {"baz": "qux", "foo": ["a", 2, "c"]},
        [
            {"op": "test", "path": "/baz", "value": "qux"},
            {"op": "test", "path": "/foo/1", "value": 2},
        ],
        {"baz": "qux", "foo": ["a", 2, "c"]},
    ),
    ("A.9", {"baz": "qux"}, [{"op": "test", "path": "/baz", "value": "bar"}], None),
    (
        "A.10",
        {"foo": "bar"},
        [{"op": "add", "path": "/child", "value": {"grandchild": {}}}],
        {"foo": "bar", "child": {"grandchild": {}}},
    ),
    (
        "A.11",
        {"foo": "bar"},
        [{"op": "add", "path": "/baz", "value": "qux", "xyz": 123}],
        {"foo": "bar", "baz": "qux"},
    ),
    ("A.12", {"foo": "bar"}, [{"op": "add", "path": "/baz/bat", "value": "qux"}], None),
    # A.13 (two "op" members) cannot be told apart once parsed: the parser keeps the last one,
    # here a remove of a member that does not exist.
    (
        "A.13",
        {"foo": "bar"},
        orjson.loads(b'[{"op": "add", "path": "/baz", "value": "qux", "op": "remove"}]'),
        None,
    ),
    (
        "A.14",
        {"/": 9, "~1": 10},
        [{"op": "test", "path": "/~01", "value": 10}],
        {"/": 9, "~1": 10},
    ),
    ("A.15", {"/": 9, "~1": 10}, [{"op": "test", "path": "/~01", "value": "10"}], None),
    (
        "A.16",
        {"foo": ["bar"]},
        [{"op": "add", "path": "/foo/-", "value": ["abc", "def"]}],
        {"foo": ["bar", ["abc", "def"]]},
    ),
]


@pytest.mark.parametrize(("section", "doc", "patch", "result"), RFC6902_EXAMPLES)
def test_rfc6902_appendix_a(
    section: str, doc: dict[str, Any], patch: list[Any], result: dict[str, Any] | None
) -> None:
    if result is None:
        assert rejected(doc, patch)
    else:
        assert strict(patched(doc, patch)) == strict(result), section


def test_test_compares_json_values_not_python_values() -> None:
    doc: dict[str, Any] = {"zero": 0, "one": 1, "t": True, "f": False, "xs": [1, {"k": 0}]}
    for path, value in [("/one", 1.0), ("/zero", 0.0), ("/t", True), ("/xs", [1.0, {"k": 0}])]:
        patched(doc, [{"op": "test", "path": path, "value": value}])
    for path, value in [
        ("/zero", False),
        ("/one", True),
        ("/t", 1),
        ("/f", 0),
        ("/f", None),
        ("/xs", [True, {"k": 0}]),
        ("/xs", [1, {"k": False}]),
        ("/xs", [1]),
        ("/one", "1"),
    ]:
        reason = rejected(doc, [{"op": "test", "path": path, "value": value}])
        assert reason == f"op 0 (test): the value at {path} is not equal to the tested value"


def test_root_operations() -> None:
    doc: dict[str, Any] = {"a": {"b": 1}}
    assert patched(doc, [{"op": "replace", "path": "", "value": {"z": 1}}]) == {"z": 1}
    assert patched(doc, [{"op": "move", "from": "/a", "path": ""}]) == {"b": 1}
    assert patched(doc, [{"op": "test", "path": "", "value": {"a": {"b": 1}}}]) == doc
    assert patched(doc, [{"op": "copy", "from": "", "path": "/c"}]) == {"a": {"b": 1}, "c": doc}
    # A move to the root takes a value out of the caller's document; changing it afterwards
    # must still leave that document alone.
    moved = patched(
        doc, [{"op": "move", "from": "/a", "path": ""}, {"op": "add", "path": "/x", "value": 2}]
    )
    assert moved == {"b": 1, "x": 2}
    # The root may be a non-object in between, as long as the result is an object.
    assert patched(
        doc,
        [
            {"op": "replace", "path": "", "value": [1]},
            {"op": "replace", "path": "", "value": {"k": []}},
        ],
    ) == {"k": []}
    for value in ([1], "s", 1, None, True):
        assert rejected(doc, [{"op": "replace", "path": "", "value": value}]) == (
            "the document must stay a JSON object"
        )
    assert rejected({"a": [1]}, [{"op": "move", "from": "/a", "path": ""}]) == (
        "the document must stay a JSON object"
    )


def test_moves_and_copies() -> None:
    doc: dict[str, Any] = {"a": {"b": {"c": 1}}, "xs": [{"k": 1}, {"k": 2}, {"k": 3}]}
    # "from" may be a child of "path" (hoisting), just not a proper prefix of it.
    assert patched(doc, [{"op": "move", "from": "/a/b", "path": "/a"}])["a"] == {"c": 1}
    assert patched(doc, [{"op": "move", "from": "/a", "path": "/a"}]) == doc
    # The removal happens first, so the index in "path" counts without the moved element.
    moved = patched(doc, [{"op": "move", "from": "/xs/0", "path": "/xs/1/m"}])
    assert moved["xs"] == [{"k": 2}, {"k": 3, "m": {"k": 1}}]
    assert patched(doc, [{"op": "copy", "from": "/a", "path": "/a/b/d"}])["a"] == {
        "b": {"c": 1, "d": {"b": {"c": 1}}}
    }
    copied = patched(
        doc,
        [{"op": "copy", "from": "/xs/0", "path": "/y"}, {"op": "add", "path": "/y/z", "value": 0}],
    )
    assert copied["xs"][0] == {"k": 1}
    assert copied["y"] == {"k": 1, "z": 0}


ERRORS: list[tuple[Any, str]] = [
    ({"op": "add", "path": "/x", "value": 1}, "a JSON Patch must be an array of operations"),
    (None, "a JSON Patch must be an array of operations, not null"),
    ("[]", "a JSON Patch must be an array of operations, not a string"),
    ([1], "op 0: an operation must be an object, not a number"),
    ([[]], "op 0: an operation must be an object, not an array"),
    ([{"path": "/a"}], 'op 0: the member "op" is missing'),
    ([{"op": "frob", "path": "/a"}], "op 0: unknown op 'frob'"),
    ([{"op": "ADD", "path": "/a", "value": 1}], "op 0: unknown op 'ADD'"),
    ([{"op": None, "path": "/a"}], "op 0: unknown op None"),
    ([{"op": "remove"}], 'op 0 (remove): the member "path" is missing'),
    ([{"op": "add", "path": "/x"}], 'op 0 (add): the member "value" is missing'),
    ([{"op": "replace", "path": "/a"}], 'op 0 (replace): the member "value" is missing'),
    ([{"op": "test", "path": "/a"}], 'op 0 (test): the member "value" is missing'),
    ([{"op": "move", "path": "/x"}], 'op 0 (move): the member "from" is missing'),
    ([{"op": "copy", "path": "/x"}], 'op 0 (copy): the member "from" is missing'),
    ([{"op": "remove", "path": 1}], 'op 0 (remove): "path" must be a string, not a number'),
    ([{"op": "copy", "path": "/x", "from": None}], '"from" must be a string, not null'),
    ([{"op": "remove", "path": "a"}], "path a is not a JSON pointer (it must be empty or start"),
    ([{"op": "remove", "path": "/~2"}], "path /~2 is not a JSON pointer ('~' must be followed"),
    ([{"op": "remove", "path": "/a~"}], "path /a~ is not a JSON pointer ('~' must be followed"),
    ([{"op": "move", "from": "/a~x", "path": "/b"}], "from /a~x is not a JSON pointer"),
    ([{"op": "move", "from": "/o", "path": "/o/p"}], "cannot move /o into its own child /o/p"),
    ([{"op": "move", "from": "", "path": "/x"}], "cannot move '' (the whole document) into"),
    ([{"op": "remove", "path": "/nope"}], "op 0 (remove): path /nope does not exist"),
    ([{"op": "remove", "path": ""}], "op 0 (remove): path '' (the whole document): can't remove"),
    ([{"op": "replace", "path": "/nope", "value": 1}], "path /nope does not exist"),
    ([{"op": "remove", "path": "/o/p/q"}], "path /o/p/q: member 'p' does not exist"),
    ([{"op": "add", "path": "/nope/x", "value": 1}], "path /nope/x: member 'nope' does not exist"),
    ([{"op": "add", "path": "/n/x", "value": 1}], "goes into a value that is not an object"),
    ([{"op": "add", "path": "/s/0", "value": 1}], "a step of the pointer goes into a string"),
    ([{"op": "test", "path": "/nope", "value": 1}], "op 0 (test): path /nope does not exist"),
    ([{"op": "test", "path": "/xs/-", "value": None}], "op 0 (test): path /xs/- does not exist"),
    ([{"op": "test", "path": "/n", "value": "1"}], "the value at /n is not equal to the tested"),
    ([{"op": "move", "from": "/nope", "path": "/x"}], "op 0 (move): from /nope does not exist"),
    ([{"op": "copy", "from": "/xs/3", "path": "/x"}], "op 0 (copy): from /xs/3 does not exist"),
    # Array indices: out of range, leading zeros, signs, and "-" where an element must exist.
    ([{"op": "add", "path": "/xs/4", "value": 1}], "path /xs/4: the array index is out of range"),
    ([{"op": "remove", "path": "/xs/3"}], "op 0 (remove): path /xs/3 does not exist"),
    ([{"op": "replace", "path": "/xs/3", "value": 1}], "path /xs/3 does not exist"),
    ([{"op": "move", "from": "/xs/0", "path": "/xs/3"}], "the array index is out of range"),
    ([{"op": "add", "path": "/xs/01", "value": 1}], "'01' is not an array index"),
    ([{"op": "remove", "path": "/xs/00"}], "'00' is not an array index"),
    ([{"op": "add", "path": "/xs/-1", "value": 1}], "'-1' is not an array index"),
    ([{"op": "add", "path": "/xs/+1", "value": 1}], "'+1' is not an array index"),
    ([{"op": "add", "path": "/xs/ 1", "value": 1}], "' 1' is not an array index"),
    ([{"op": "add", "path": "/xs/1.0", "value": 1}], "'1.0' is not an array index"),
    ([{"op": "add", "path": "/xs/x", "value": 1}], "'x' is not an array index"),
    ([{"op": "remove", "path": "/xs/-"}], "'-' (past the end of an array) names no element"),
    ([{"op": "replace", "path": "/xs/-", "value": 1}], "'-' (past the end of an array) names no"),
    ([{"op": "move", "from": "/xs/-", "path": "/y"}], "names no element"),
    ([{"op": "copy", "from": "/xs/-", "path": "/y"}], "names no element"),
    ([{"op": "add", "path": "/xs/-/a", "value": 1}], "'-' (past the end of an array) has no"),
    # The failing operation is named by its index, after operations that succeeded.
    (
        [{"op": "add", "path": "/y", "value": 1}, {"op": "remove", "path": "/xs/9"}],
        "op 1 (remove): path /xs/9 does not exist",
    ),
]


@pytest.mark.parametrize(("patch", "reason"), ERRORS)
def test_errors(patch: Any, reason: str) -> None:
    doc: dict[str, Any] = {"o": {}, "xs": [1, 2, 3], "n": 1, "s": "str"}
    got = rejected(doc, patch)
    assert reason in got
    assert len(got) < 240


def test_error_types_and_no_document_in_reasons() -> None:
    secret = {"o": {"token": "s3cr3t" * 20}}
    with pytest.raises(PatchError) as error:
        apply_json_patch(secret, [{"op": "remove", "path": "/x/y"}])
    assert isinstance(error.value, LukhasError)
    assert isinstance(error.value, ValueError)
    assert "s3cr3t" not in error.value.reason
    assert error.value.reason == str(error.value)
    with pytest.raises(PatchError, match="must be a JSON object"):
        apply_json_patch([], [])  # type: ignore[arg-type]


def test_nothing_is_half_applied() -> None:
    doc: dict[str, Any] = {"a": {"b": [1, {"c": 2}]}, "d": [[0]]}
    snapshot = copy.deepcopy(doc)
    patch = [
        {"op": "add", "path": "/a/b/1/new", "value": 1},
        {"op": "remove", "path": "/a/b/0"},
        {"op": "move", "from": "/d/0", "path": "/a/b/0/moved"},
        {"op": "copy", "from": "/a", "path": "/d/-"},
        {"op": "replace", "path": "/a/b/0/c", "value": {"x": 1}},
        {"op": "add", "path": "/d/0/-", "value": 5},
        {"op": "test", "path": "/a/b/0/c", "value": "wrong"},
    ]
    assert rejected(doc, patch).startswith("op 6 (test)")
    assert doc == snapshot
    # The same patch up to the failing test succeeds, and still leaves the input alone.
    result = patched(doc, patch[:-1])
    assert result["a"] == {"b": [{"c": {"x": 1}, "new": 1, "moved": [0]}]}
    assert doc == snapshot


def test_values_are_copied_from_the_patch() -> None:
    value: dict[str, Any] = {"k": [1]}
    patch = [
        {"op": "add", "path": "/v", "value": value},
        {"op": "add", "path": "/v/k/-", "value": 2},
    ]
    assert patched({}, patch) == {"v": {"k": [1, 2]}}
    assert value == {"k": [1]}


def test_deep_values_are_refused_or_compared_without_recursion() -> None:
    deep: list[Any] = []
    node = deep
    for _ in range(100_000):
        node.append([])
        node = node[0]
    # Called directly: the snapshot that ``rejected`` takes would itself hit the limit.
    with pytest.raises(PatchError, match="deeper than 64 levels at /x"):
        apply_json_patch({}, [{"op": "add", "path": "/x", "value": deep}])
    # Compared iteratively: no recursion limit is reached, and the outcome is a plain answer.
    with pytest.raises(PatchError, match="is not equal to the tested value"):
        apply_json_patch({}, [{"op": "test", "path": "", "value": deep}])
    same: list[Any] = []
    node = same
    for _ in range(100_000):
        node.append([])
        node = node[0]
    assert apply_json_patch({"d": deep}, [{"op": "test", "path": "/d", "value": same}])


def test_make_json_patch_appends_one_add() -> None:
    messages = [{"id": f"m{i}", "role": "user", "content": "hi " * 10} for i in range(50)]
    old: dict[str, Any] = {"id": "c", "messages": messages}
    new = copy.deepcopy(old)
    new["messages"].append({"id": "m50", "role": "assistant", "content": "hello"})
    delta = make_json_patch(old, new)
    assert delta == [
        {
            "op": "add",
            "path": "/messages/50",
            "value": {"id": "m50", "role": "assistant", "content": "hello"},
        }
    ]
    assert apply_json_patch(old, delta) == new
    assert make_json_patch(old, copy.deepcopy(old)) == []
    bad: Any
    for bad in ([], None, "x"):
        with pytest.raises(PatchError, match="must be a JSON object"):
            make_json_patch(bad, {})
    with pytest.raises(PatchError, match="cannot express"):
        make_json_patch({"a": {1: "x"}}, {"a": {1: "y"}})


# RFC 7386, section 3 and Appendix A: (target, patch, result or None when not an object).
RFC7386_EXAMPLES: list[tuple[Any, Any, Any]] = [
    (
        {
            "title": "Goodbye!",
            "author": {"givenName": "John", "familyName": "Doe"},
            "tags": ["example", "sample"],
            "content": "This will be unchanged",
        },
        {
            "title": "Hello!",
            "phoneNumber": "+01-123-456-7890",
            "author": {"familyName": None},
            "tags": ["example"],
        },
        {
            "title": "Hello!",
            "author": {"givenName": "John"},
            "tags": ["example"],
            "content": "This will be unchanged",
            "phoneNumber": "+01-123-456-7890",
        },
    ),
    ({"a": "b"}, {"a": "c"}, {"a": "c"}),
    ({"a": "b"}, {"b": "c"}, {"a": "b", "b": "c"}),
    ({"a": "b"}, {"a": None}, {}),
    ({"a": "b", "b": "c"}, {"a": None}, {"b": "c"}),
    ({"a": ["b"]}, {"a": "c"}, {"a": "c"}),
    ({"a": "c"}, {"a": ["b"]}, {"a": ["b"]}),
    ({"a": {"b": "c"}}, {"a": {"b": "d", "c": None}}, {"a": {"b": "d"}}),
    ({"a": [{"b": "c"}]}, {"a": [1]}, {"a": [1]}),
    (["a", "b"], ["c", "d"], None),
    ({"a": "b"}, ["c"], None),
    ({"a": "foo"}, None, None),
    ({"a": "foo"}, "bar", None),
    ({"e": None}, {"a": 1}, {"e": None, "a": 1}),
    ([1, 2], {"a": "b", "c": None}, None),
    ({}, {"a": {"bb": {"ccc": None}}}, {"a": {"bb": {}}}),
]


@pytest.mark.parametrize(("target", "patch", "result"), RFC7386_EXAMPLES)
def test_rfc7386_examples(target: Any, patch: Any, result: Any) -> None:
    before_target, before_patch = copy.deepcopy(target), copy.deepcopy(patch)
    if result is None:
        with pytest.raises(PatchError, match="must be a JSON object"):
            apply_merge_patch(target, patch)
    else:
        assert strict(apply_merge_patch(target, patch)) == strict(result)
    assert strict(target) == strict(before_target)
    assert strict(patch) == strict(before_patch)


def test_merge_patch_details() -> None:
    doc: dict[str, Any] = {"a": {"b": {"c": 1}, "keep": [1]}, "n": 1}
    result = apply_merge_patch(doc, {"a": {"b": {"d": 2}}, "n": {"x": None, "y": [None]}})
    assert result == {"a": {"b": {"c": 1, "d": 2}, "keep": [1]}, "n": {"y": [None]}}
    assert doc == {"a": {"b": {"c": 1}, "keep": [1]}, "n": 1}
    assert apply_merge_patch(doc, {}) == doc
    with pytest.raises(PatchError, match="member name must be a string"):
        apply_merge_patch(doc, {"a": {1: 2}})
    deep: dict[str, Any] = {}
    node = deep
    for _ in range(100_000):
        node["k"] = {}
        node = node["k"]
    merged = apply_merge_patch({}, deep)  # iterative: no recursion limit
    with pytest.raises(NestingTooDeepError):
        check_depth(merged, 1000)


def test_check_depth() -> None:
    check_depth({}, 1)
    check_depth({"a": 1, "b": "x"}, 1)
    check_depth(5, 0)
    check_depth({"a": [{"b": []}]}, 4)
    with pytest.raises(NestingTooDeepError) as info:
        check_depth({"a": [{"b": []}]}, 3)
    assert info.value.max_depth == 3
    assert isinstance(info.value, PatchError)
    assert "deeper than 3" in info.value.reason
    with pytest.raises(NestingTooDeepError):
        check_depth({}, 0)
    deep: list[Any] = []
    node = deep
    for _ in range(99_999):
        node.append([])
        node = node[0]
    check_depth(deep, 100_000)  # iterative: no recursion limit
    with pytest.raises(NestingTooDeepError):
        check_depth(deep, 99_999)
    cyclic: dict[str, Any] = {}
    cyclic["self"] = cyclic
    with pytest.raises(NestingTooDeepError):
        check_depth(cyclic, 50)


# Hypothesis: JSON values whose keys and pointers hit the escapes and the array syntax.
KEYS = st.sampled_from(["a", "b", "0", "1", "01", "-", "~", "/", "~1", ""]) | st.text(max_size=3)
SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=4)
)
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(KEYS, inner, max_size=4),
    max_leaves=12,
)
OBJECTS = st.dictionaries(KEYS, VALUES, max_size=5)
TOKENS = st.sampled_from(["a", "b", "0", "1", "2", "01", "-", "~0", "~1", "~2", "~", "", "x"])
POINTERS = st.lists(TOKENS, max_size=4).map(lambda parts: "".join("/" + p for p in parts)) | (
    st.text(max_size=6)
)
OPERATIONS = st.fixed_dictionaries(
    {},
    optional={
        "op": st.sampled_from(["add", "remove", "replace", "move", "copy", "test", "x"]) | VALUES,
        "path": POINTERS | VALUES,
        "from": POINTERS | VALUES,
        "value": VALUES,
    },
)
PATCHES = st.lists(OPERATIONS | VALUES, max_size=5) | VALUES
# Well-formed operations whose pointers often resolve in ``nested`` below.
FOUND = st.lists(st.sampled_from(["a", "b", "0", "1", "-", "x"]), max_size=3).map(
    lambda parts: "".join("/" + p for p in parts)
)
WELL_FORMED = st.one_of(
    st.fixed_dictionaries(
        {"op": st.sampled_from(["add", "replace", "test"]), "path": FOUND, "value": VALUES}
    ),
    st.fixed_dictionaries({"op": st.just("remove"), "path": FOUND}),
    st.fixed_dictionaries({"op": st.sampled_from(["move", "copy"]), "from": FOUND, "path": FOUND}),
)


def json_patch_outcome(doc: dict[str, Any], patch: Any) -> tuple[bool, bytes]:
    """(succeeded, result or reason), asserting that only ``PatchError`` is raised and that
    nothing changed."""
    try:
        return True, strict(patched(doc, patch))
    except PatchError as exc:
        assert exc.reason
        return False, exc.reason.encode()


@settings(max_examples=200, deadline=None)
@given(OBJECTS, OBJECTS)
def test_make_then_apply_round_trips(old: dict[str, Any], new: dict[str, Any]) -> None:
    before_old, before_new = strict(old), strict(new)
    delta = make_json_patch(old, new)
    assert strict(patched(old, delta)) == strict(new)
    assert (strict(old), strict(new)) == (before_old, before_new)


def nested_document(doc: dict[str, Any]) -> dict[str, Any]:
    # A copy, not ``doc`` twice: parsed JSON never shares a value between two places (and
    # jsonpatch's deepcopy would keep the sharing, changing both places at once).
    return {
        "a": {"b": [1, {"a": [2]}], "0": doc},
        "b": [[0], {"-": 1}, []],
        "x": copy.deepcopy(doc),
        "1": {},
    }


def check_against_jsonpatch(doc: dict[str, Any], patch: Any) -> None:
    """Only ``PatchError``, nothing changed, deterministic, and the same documents as
    jsonpatch's own apply, which works on a deep copy: copying only the changed paths must
    not change the outcome."""
    ok, outcome = json_patch_outcome(doc, patch)
    assert json_patch_outcome(doc, patch) == (ok, outcome)
    if not isinstance(patch, list):
        # jsonpatch would parse a string as JSON text, and accepts other iterables.
        assert not ok
        return
    try:
        reference = jsonpatch.apply_patch(copy.deepcopy(doc), copy.deepcopy(patch))
    except Exception:
        assert not ok, outcome
        return
    if isinstance(reference, dict):
        assert ok, outcome
        assert outcome == strict(reference)
    else:
        assert outcome == b"the document must stay a JSON object"


@settings(max_examples=200, deadline=None)
@given(OBJECTS, PATCHES)
def test_garbage_patches(doc: dict[str, Any], patch: Any) -> None:
    check_against_jsonpatch(doc, patch)


@settings(max_examples=200, deadline=None)
@given(OBJECTS, st.lists(WELL_FORMED, min_size=1, max_size=4))
def test_op_sequences_on_nested_documents(doc: dict[str, Any], patch: list[Any]) -> None:
    # Many pointers of the strategy resolve in this document, so operations succeed and
    # chain, which exercises the copying of the changed paths.
    nested = nested_document(doc)
    check_against_jsonpatch(nested, patch)


def reference_merge(target: Any, patch: Any) -> Any:
    """RFC 7386, section 2, as written (recursive, copying)."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, dict) else {}
    for name, value in patch.items():
        if value is None:
            result.pop(name, None)
        else:
            result[name] = reference_merge(result.get(name), value)
    return result


@settings(max_examples=200, deadline=None)
@given(OBJECTS, VALUES)
def test_merge_patch_matches_the_rfc_algorithm(doc: dict[str, Any], patch: Any) -> None:
    before_doc, before_patch = strict(doc), strict(patch)
    try:
        result = apply_merge_patch(doc, patch)
    except PatchError:
        assert not isinstance(patch, dict)
    else:
        assert strict(result) == strict(reference_merge(doc, patch))
    assert (strict(doc), strict(patch)) == (before_doc, before_patch)


def reference_depth(value: Any) -> int:
    if isinstance(value, dict):
        return 1 + max(map(reference_depth, value.values()), default=0)
    if isinstance(value, list):
        return 1 + max(map(reference_depth, value), default=0)
    return 0


@settings(max_examples=150, deadline=None)
@given(VALUES, st.integers(0, 8), st.integers(0, 1500), st.sampled_from([list, dict]))
def test_check_depth_matches_a_reference(
    value: Any, limit: int, wraps: int, kind: type[Any]
) -> None:
    depth = reference_depth(value) + wraps  # each wrapper adds one level, even around a scalar
    for _ in range(wraps):
        value = [value] if kind is list else {"k": value}
    for max_depth in (limit, depth, depth - 1):
        if depth > max_depth and depth > 0:  # a scalar passes any limit
            with pytest.raises(NestingTooDeepError):
                check_depth(value, max_depth)
        else:
            check_depth(value, max_depth)


def test_diff_canonical_turns_one_document_into_the_other() -> None:
    """With the native byte diff or without it (the pure-Python run), the same contract as
    make_json_patch: the operations make the new document, as canonical JSON."""
    from lukhas_context.schemas.patch import apply_json_patch, diff_canonical

    sort = orjson.OPT_SORT_KEYS
    pairs = [
        ({"a": 1, "m": [1, 2]}, {"a": 1.0, "m": [1, 2, {"x": True}], "n": None}),
        ({"k~/": {"q": [True]}}, {"k~/": {"q": [1]}}),
        ({'q"t': 1, "b": [3, 2, 1]}, {'q"t': 2, "b": [3]}),
        ({}, {}),
    ]
    for old, new in pairs:
        ops = diff_canonical(orjson.dumps(old, option=sort), orjson.dumps(new, option=sort))
        made = apply_json_patch(old, ops)
        assert orjson.dumps(made, option=sort) == orjson.dumps(new, option=sort), ops
