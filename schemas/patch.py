"""The patch algebra of the fold: RFC 6902 JSON Patch, RFC 7386 merge patch, nesting depth.

Every function here is pure and deterministic: the result depends only on the arguments, the
arguments are never mutated, and anything wrong with a patch is a ``PatchError`` carrying a
short ``reason`` (the fold turns it into a ``REJECTED`` outcome). Nothing is ever half-applied:
a failing patch returns no document at all.

**Total, bounded, deterministic.** A patch is hostile input: thirty ``copy`` operations of the
whole document double it thirty times, and ``add``/``move`` can build values hundreds of levels
deep. So the work of a JSON Patch is bounded *before* it is done, by rules that depend only on
the document and the patch (``PatchLimits``): the number of operations; the nesting depth of
the document after every operation (not only at the end); and the JSON bytes the patch may
insert, copy or re-check (its *work*). An operation over a bound is a ``PatchError`` naming the
bound, raised before the operation allocates anything. Every walk (copy, comparison, depth,
size) uses an explicit stack, never Python recursion, so no outcome depends on the caller's
stack depth, the recursion limit, the memory of the machine or the clock: every replica and
every replay decides alike. ``MemoryError`` and ``RecursionError`` are never caught here; the
bounds make them impossible for any input within the fold's size limits.

Documents and patches are JSON values as parsed by a JSON library: ``dict`` (string keys),
``list``, ``str``, ``int``, ``float``, ``bool`` and ``None``, without cycles.

**Results share structure with their inputs.** Copying a whole document per patch costs far
more than the fold's budget (``copy.deepcopy`` of a 5 KB conversation is ~300 µs; see
``benchmarks/patch_micro.py``), so each function copies only the objects and arrays on the
paths it changes and keeps every other sub-value of the input in the result as it is.
Neither input is ever changed, but changing the *result* in place can change values that the
input (or the merge patch) also holds: treat all three as read-only, as the fold does (it
serialises the result at once).

Over 450 lines, for one job: applying a patch under bounds fixed before any work is done.
The RFC 6902 operations, the merge patch, the iterative copy/compare and the work accounting
share one budget object and one error type; split apart, each piece would have to re-check
what the others already bounded.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

import jsonpatch
import orjson

from lukhas_context.schemas.exceptions import NestingTooDeepError, PatchError

_native_diff: Callable[[bytes, bytes], list[dict[str, Any]] | None] | None
try:
    from lukhas_context.schemas._fastjson import diff_documents as _native_diff
except ImportError:  # built without a C compiler: make_json_patch diffs every pair
    _native_diff = None

__all__ = [
    "DEFAULT_PATCH_LIMITS",
    "PatchLimits",
    "apply_json_patch",
    "apply_merge_patch",
    "check_depth",
    "diff_canonical",
    "json_weight",
    "make_json_patch",
    "validate_json_patch",
]

#: The operations of RFC 6902, section 4, and the members each needs besides "op" and "path".
_REQUIRED: Final[dict[str, tuple[str, ...]]] = {
    "add": ("value",),
    "remove": (),
    "replace": ("value",),
    "move": ("from",),
    "copy": ("from",),
    "test": ("value",),
}

#: RFC 6901: an array index is 0 or digits without a leading zero.
_ARRAY_INDEX: Final = re.compile(r"0|[1-9][0-9]*")
#: An index past any array there can be (read as this, never converted from its digits).
_PAST_ANY_ARRAY: Final = 1 << 62
_BAD_ESCAPE: Final = re.compile(r"~(?:[^01]|$)")

#: The JSON containers (a tuple: isinstance with a tuple is faster than with a union).
_CONTAINERS: Final = (dict, list)

#: Longest excerpt of caller-supplied text (paths, op names) quoted in a reason.
_CLIP: Final = 80


@dataclass(frozen=True, slots=True)
class PatchLimits:
    """The bounds of one JSON Patch, part of the fold's semantics (the same on every replica
    and replay). ``max_depth`` bounds the document after *every* operation, as the store
    bounds documents (the root object is depth 1). ``max_work`` counts JSON bytes, measured
    as ``json_weight`` does: the values ``add`` and ``replace`` insert, the values ``copy``
    duplicates, and the values ``move`` takes deeper (whose depth must be checked again)."""

    max_operations: int = 1000
    max_depth: int = 64
    max_work: int = 2 * 1024 * 1024


DEFAULT_PATCH_LIMITS: Final = PatchLimits()


class _Fail(Exception):
    """A failure of one step while an operation runs; ``apply_json_patch`` adds the label."""

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class _TooDeep(Exception):
    """``_measure``: the value nests deeper than allowed."""


class _TooHeavy(Exception):
    """``_measure``: the value weighs more than the budget."""


@dataclass(frozen=True, slots=True)
class _Step:
    """One validated operation."""

    index: int
    name: str
    path: tuple[str, ...]
    source: tuple[str, ...] | None
    value: Any
    #: ``json_weight`` of the value (add, replace), 0 otherwise.
    weight: int
    raw_path: str
    raw_from: str | None

    @property
    def label(self) -> str:
        return f"op {self.index} ({self.name})"

    def where(self) -> str:
        return f"path {_show(self.raw_path)}"


def validate_json_patch(patch: Any, limits: PatchLimits = DEFAULT_PATCH_LIMITS) -> None:
    """Raises ``PatchError`` for the first thing wrong with ``patch`` that does not depend on
    a document: not an array, too many operations, an operation that is not an object, an
    unknown op, a missing or mistyped member, an invalid pointer, a move into its own child,
    a value nested too deeply for the place it goes, more bytes than ``max_work``. Producers
    call it before sending; ``apply_json_patch`` checks the same first."""
    _validate(patch, limits)


def apply_json_patch(
    doc: dict[str, Any], patch: Any, limits: PatchLimits = DEFAULT_PATCH_LIMITS
) -> dict[str, Any]:
    """Apply an RFC 6902 JSON Patch (add, remove, replace, move, copy, test) to ``doc``.

    ``patch`` is the parsed JSON value: an array of operation objects. The whole patch is
    checked before any operation runs (``validate_json_patch``), then the operations run in
    order, each checked against ``limits`` before it changes anything; members an operation
    does not use are ignored (RFC 6902, section 4). ``test`` compares as section 4.6 says:
    numbers by value (1 equals 1.0), but true and false only equal themselves (1 is not
    true, 0 is not false).

    Returns the patched document, a new dict (an empty patch returns an equal copy). ``doc``
    is never changed, also when the patch fails; see the module docstring on shared values.
    ``doc`` itself must be within ``limits.max_depth`` (the store's documents are).

    Raises ``PatchError`` for anything wrong, and nothing else: a malformed patch (see
    ``validate_json_patch``), a location that does not exist, an array index that is out of
    range, has a leading zero or is ``-`` where an existing element is needed, a failing
    ``test``, an operation that would nest the document deeper than ``limits.max_depth`` or
    take the patch's work past ``limits.max_work``, and a result that is not a JSON object
    ("the document must stay a JSON object").
    """
    if not isinstance(doc, dict):
        raise PatchError(f"the document must be a JSON object, not {_json_type(doc)}")
    steps = _validate(patch, limits)
    run = _Run(limits, sum(step.weight for step in steps))
    root: Any = doc
    for step in steps:
        try:
            root = run.apply(step, root)
        except _Fail as failure:
            raise PatchError(f"{step.label}: {failure.detail}") from None
    if not isinstance(root, dict):
        raise PatchError("the document must stay a JSON object")
    return root if id(root) in run.owned else dict(root)


def _validate(patch: Any, limits: PatchLimits) -> list[_Step]:
    """The operations of ``patch`` ready to run, or ``PatchError`` for the first malformed
    one. Checked before anything runs, so a malformed patch fails whatever the document."""
    if not isinstance(patch, list):
        raise PatchError(f"a JSON Patch must be an array of operations, not {_json_type(patch)}")
    if len(patch) > limits.max_operations:
        raise PatchError(
            f"the patch has {len(patch)} operations, over the limit of {limits.max_operations}"
        )
    steps = [_validate_op(index, raw, limits) for index, raw in enumerate(patch)]
    inserted = 0
    for step in steps:
        inserted += step.weight
        if inserted > limits.max_work:
            raise PatchError(f"{step.label}: {_over_work(limits)}")
    return steps


def _validate_op(index: int, raw: Any, limits: PatchLimits) -> _Step:
    if not isinstance(raw, dict):
        raise PatchError(f"op {index}: an operation must be an object, not {_json_type(raw)}")
    if "op" not in raw:
        raise PatchError(f'op {index}: the member "op" is missing')
    name = raw["op"]
    if not isinstance(name, str) or name not in _REQUIRED:
        raise PatchError(f"op {index}: unknown op {_clip(repr(name))}")
    label = f"op {index} ({name})"
    for member in ("path", *_REQUIRED[name]):
        if member not in raw:
            raise PatchError(f'{label}: the member "{member}" is missing')
    path = _pointer(label, "path", raw["path"], limits)
    source = None
    if name in ("move", "copy"):
        source = _pointer(label, "from", raw["from"], limits)
        # RFC 6902, 4.4: "from" must not be a proper prefix of "path".
        if name == "move" and len(source) < len(path) and path[: len(source)] == source:
            raise PatchError(
                f"{label}: cannot move {_show(raw['from'])} into its own child {_show(raw['path'])}"
            )
    value = raw.get("value")
    weight = 0
    if name in ("add", "replace"):
        try:
            weight = _measure(value, limits.max_depth - len(path), limits.max_work)
        except _TooDeep:
            raise PatchError(
                f"{label}: the value would nest the document deeper than {limits.max_depth} "
                f"levels at {_show(raw['path'])}"
            ) from None
        except _TooHeavy:
            raise PatchError(f"{label}: {_over_work(limits)}") from None
    return _Step(index, name, path, source, value, weight, raw["path"], raw.get("from"))


def _over_work(limits: PatchLimits) -> str:
    return (
        f"the patch would insert, copy or move deeper more than {limits.max_work} bytes of "
        "JSON (the limit of one patch's work)"
    )


def _pointer(label: str, member: str, value: Any, limits: PatchLimits) -> tuple[str, ...]:
    """``value`` parsed as an RFC 6901 pointer (its unescaped reference tokens), or
    ``PatchError`` naming the defect. A pointer longer than the document may nest can never
    resolve, and is refused here (which also bounds every walk by the depth limit)."""
    if not isinstance(value, str):
        raise PatchError(f'{label}: "{member}" must be a string, not {_json_type(value)}')
    if not value:
        return ()
    if value[0] != "/":
        raise PatchError(
            f"{label}: {member} {_show(value)} is not a JSON pointer "
            "(it must be empty or start with '/')"
        )
    if _BAD_ESCAPE.search(value):
        raise PatchError(
            f"{label}: {member} {_show(value)} is not a JSON pointer "
            "('~' must be followed by 0 or 1)"
        )
    parts = value[1:].split("/")
    if len(parts) > limits.max_depth:
        raise PatchError(
            f"{label}: {member} {_show(value)} has {len(parts)} steps, deeper than "
            f"{limits.max_depth} levels (the most a document may nest)"
        )
    if "~" in value:
        parts = [part.replace("~1", "/").replace("~0", "~") for part in parts]
    return tuple(parts)


class _Run:
    """The state of one patch being applied: the containers it owns (copied from the input,
    or created by it, so changing them in place changes nothing of the caller's) and the
    work it has left."""

    __slots__ = ("_root", "limits", "owned", "work")

    def __init__(self, limits: PatchLimits, inserted: int) -> None:
        self.limits = limits
        #: The containers this patch made, by id; the values keep them alive, so no id is
        #: reused while the patch runs.
        self.owned: dict[int, Any] = {}
        self.work = inserted

    def apply(self, step: _Step, root: Any) -> Any:
        """Runs one operation on ``root``; returns the new root."""
        name = step.name
        if name == "test":
            try:
                found = _resolve(root, step.path, step.where())
            except _Fail:
                raise _Fail(f"{step.where()} does not exist") from None
            if not _json_equal(found, step.value):
                raise _Fail(f"the value at {_show(step.raw_path)} is not equal to the tested value")
            return root
        if name == "add":
            return self._add(root, step.path, step.value, step)
        if name == "replace":
            if not step.path:
                return step.value
            parent, token = self._parent(root, step)
            root = self._root
            if isinstance(parent, dict):
                if token not in parent:
                    raise _Fail(f"{step.where()} does not exist")
                parent[token] = step.value
            else:
                parent[_existing_index(parent, token, step.where())] = step.value
            return root
        if name == "remove":
            if not step.path:
                raise _Fail(f"{step.where()}: can't remove the whole document")
            self._take(root, step.path, step, step.where())
            return self._root
        assert step.source is not None and step.raw_from is not None
        source_where = f"from {_show(step.raw_from)}"
        if name == "copy":
            found = _resolve(root, step.source, source_where)
            value = self._copy(found, step)
            return self._add(root, step.path, value, step)
        # move ("from" is never a proper prefix of "path": refused by _validate)
        found = _resolve(root, step.source, source_where)
        if step.source == step.path:
            return root
        if len(step.path) > len(step.source):
            # Deeper than it was: check that the value still fits under the depth limit.
            self._charge(step, found)
        value = self._take(root, step.source, step, source_where)
        return self._add(self._root, step.path, value, step)

    # ---- the steps ----

    def _own(self, value: Any) -> Any:
        """``value`` if this patch owns it, else an owned shallow copy."""
        if id(value) in self.owned:
            return value
        copied = dict(value) if isinstance(value, dict) else list(value)
        self.owned[id(copied)] = copied
        return copied

    def _parent(self, root: Any, step: _Step, path: tuple[str, ...] | None = None,
                where: str | None = None) -> tuple[Any, str]:  # fmt: skip
        """The (owned) container that holds the last step of ``path``, and that step; every
        container on the way is replaced by an owned copy, the root included (``_root``)."""
        path = step.path if path is None else path
        where = step.where() if where is None else where
        if not isinstance(root, _CONTAINERS):
            raise _Fail(f"{where}: {_into_scalar(root)}")
        node = self._root = self._own(root)
        for token in path[:-1]:
            key: Any = token
            if isinstance(node, dict):
                if token not in node:
                    raise _Fail(f"{where}: member {_clip(repr(token))} does not exist")
            else:
                key = _existing_index(node, token, where, inner=True)
            child = node[key]
            if not isinstance(child, _CONTAINERS):
                raise _Fail(f"{where}: {_into_scalar(child)}")
            if id(child) not in self.owned:
                child = self._own(child)
                node[key] = child
            node = child
        return node, path[-1]

    def _add(self, root: Any, path: tuple[str, ...], value: Any, step: _Step) -> Any:
        if not path:
            return value
        parent, token = self._parent(root, step, path)
        if isinstance(parent, dict):
            parent[token] = value
        elif token == "-":
            parent.append(value)
        else:
            index = _index(token, step.where())
            if index > len(parent):
                raise _Fail(f"{step.where()}: the array index is out of range")
            parent.insert(index, value)
        return self._root

    def _take(self, root: Any, path: tuple[str, ...], step: _Step, where: str) -> Any:
        """Removes the value at ``path`` (in owned copies) and returns it; ``_root`` is the
        new root."""
        parent, token = self._parent(root, step, path, where)
        if isinstance(parent, dict):
            if token not in parent:
                raise _Fail(f"{where} does not exist")
            return parent.pop(token)
        return parent.pop(_existing_index(parent, token, where))

    def _copy(self, value: Any, step: _Step) -> Any:
        """A deep copy of ``value`` (owned by this patch), charged to the work budget and
        checked against the depth limit at its destination, before anything is built."""
        self._charge(step, value)
        if not isinstance(value, _CONTAINERS):
            return value
        top: Any = {} if isinstance(value, dict) else []
        pending = [(value, top)]
        owned = self.owned
        while pending:
            source, target = pending.pop()
            owned[id(target)] = target
            if isinstance(source, dict):
                for key, child in source.items():
                    if isinstance(child, _CONTAINERS):
                        twin: Any = {} if isinstance(child, dict) else []
                        pending.append((child, twin))
                        child = twin
                    target[key] = child
            else:
                for child in source:
                    if isinstance(child, _CONTAINERS):
                        twin = {} if isinstance(child, dict) else []
                        pending.append((child, twin))
                        child = twin
                    target.append(child)
        return top

    def _charge(self, step: _Step, value: Any) -> None:
        """Counts the JSON bytes of ``value`` (to be copied or moved to ``step.path``)
        against the patch's work left, and checks that it fits under the depth limit there;
        ``_Fail``, with nothing built, when either is exceeded."""
        limits = self.limits
        try:
            left = limits.max_work - self.work
            self.work += _measure(value, limits.max_depth - len(step.path), left)
        except _TooDeep:
            raise _Fail(
                f"{step.name} from {_show(step.raw_from or '')} to {_show(step.raw_path)} would "
                f"nest the document deeper than {limits.max_depth} levels"
            ) from None
        except _TooHeavy:
            raise _Fail(_over_work(limits)) from None


def _measure(value: Any, max_height: int, budget: int) -> int:
    """``json_weight(value)``, walking at most ``budget`` bytes of it, level by level:
    ``_TooHeavy`` as soon as the weight passes ``budget``, ``_TooDeep`` as soon as the value
    nests deeper than ``max_height`` levels (a scalar has height 0)."""
    if not isinstance(value, _CONTAINERS):
        weight = _scalar_weight(value)
        if weight > budget:
            raise _TooHeavy
        return weight
    weight = 0
    height = 0
    level = [value]
    while level:
        height += 1
        if height > max_height:
            raise _TooDeep
        below: list[Any] = []
        for node in level:
            weight += 2 + max(len(node) - 1, 0)
            if isinstance(node, dict):
                for key, child in node.items():
                    weight += (len(key) if isinstance(key, str) else 0) + 3
                    if isinstance(child, _CONTAINERS):
                        below.append(child)
                    else:
                        weight += _scalar_weight(child)
            else:
                for child in node:
                    if isinstance(child, _CONTAINERS):
                        below.append(child)
                    else:
                        weight += _scalar_weight(child)
            if weight > budget:
                raise _TooHeavy
        level = below
    return weight


def _scalar_weight(value: Any) -> int:
    """A lower bound of the JSON bytes of a scalar."""
    if isinstance(value, str):
        return len(value) + 2
    if value is None or value is True:
        return 4
    if value is False:
        return 5
    return 1


def json_weight(value: Any) -> int:
    """A lower bound of the bytes of ``value`` as compact JSON (strings by their length in
    characters, numbers as one byte): the measure of ``PatchLimits.max_work``."""
    return _measure(value, 1 << 62, 1 << 62)


def _resolve(root: Any, path: tuple[str, ...], where: str) -> Any:
    """The value at ``path``, which must exist (``-`` names no element)."""
    node = root
    for i, token in enumerate(path):
        last = i == len(path) - 1
        if isinstance(node, dict):
            if token not in node:
                raise _Fail(f"{where} does not exist")
            node = node[token]
        elif isinstance(node, list):
            node = node[_existing_index(node, token, where, inner=not last)]
        else:
            raise _Fail(f"{where} does not exist")
    return node


def _existing_index(array: list[Any], token: str, where: str, inner: bool = False) -> int:
    """The index of an element that must exist."""
    if token == "-":
        if inner:
            raise _Fail(f"{where}: '-' (past the end of an array) has no members")
        raise _Fail(f"{where}: '-' (past the end of an array) names no element")
    index = _index(token, where)
    if index >= len(array):
        raise _Fail(f"{where} does not exist")
    return index


def _index(token: str, where: str) -> int:
    if _ARRAY_INDEX.fullmatch(token) is None:
        raise _Fail(f"{where}: {_clip(repr(token))} is not an array index (0 or 1-9 then digits)")
    return int(token) if len(token) < 19 else _PAST_ANY_ARRAY


def _into_scalar(value: Any) -> str:
    if isinstance(value, str):
        return "a step of the pointer goes into a string"
    return "a step of the pointer goes into a value that is not an object or array"


def _json_equal(first: Any, second: Any) -> bool:
    """RFC 6902, 4.6: objects member by member, arrays item by item, numbers by value,
    true/false/null only equal themselves. Iterative; stops at the first difference, so its
    cost is bounded by the smaller value."""
    pending = [(first, second)]
    while pending:
        a, b = pending.pop()
        if isinstance(a, bool) or isinstance(b, bool):
            if not (isinstance(a, bool) and isinstance(b, bool) and a == b):
                return False
        elif isinstance(a, dict):
            if not isinstance(b, dict) or len(a) != len(b):
                return False
            for key, child in a.items():
                if key not in b:
                    return False
                pending.append((child, b[key]))
        elif isinstance(a, list):
            if not isinstance(b, list) or len(a) != len(b):
                return False
            pending.extend(zip(a, b, strict=True))
        elif isinstance(a, int | float):
            if not isinstance(b, int | float) or a != b:
                return False
        elif isinstance(b, _CONTAINERS) or type(a) is not type(b) or a != b:
            return False
    return True


def apply_merge_patch(doc: dict[str, Any], patch: Any) -> dict[str, Any]:
    """Apply an RFC 7386 JSON merge patch to ``doc``; returns the merged document.

    Members of ``patch`` set to null remove the member (absent ones are ignored), object
    members merge recursively, and every other value (arrays included) replaces the member.
    Nulls inside a merged-in object are dropped, as the RFC's algorithm does; nulls inside
    arrays are kept. Neither argument is changed; see the module docstring on shared values.

    Raises ``PatchError`` if ``doc`` or ``patch`` is not a JSON object (a non-object merge
    patch replaces the whole document with that value, which the store does not hold), or if
    an object of the patch has a member name that is not a string. Iterative, so the depth of
    the patch is limited only by memory.
    """
    if not isinstance(doc, dict):
        raise PatchError(f"the document must be a JSON object, not {_json_type(doc)}")
    if not isinstance(patch, dict):
        raise PatchError(
            f"a merge patch must be a JSON object, not {_json_type(patch)}: "
            "the document must stay a JSON object"
        )
    result = dict(doc)
    pending: list[tuple[dict[str, Any], dict[Any, Any]]] = [(result, patch)]
    while pending:
        target, changes = pending.pop()
        for name, value in changes.items():
            if not isinstance(name, str):
                raise PatchError(f"a merge patch member name must be a string, not {name!r}")
            if value is None:
                target.pop(name, None)
            elif isinstance(value, dict):
                current = target.get(name)
                # A non-object member is replaced by an empty object first (RFC 7386, 2).
                child = dict(current) if isinstance(current, dict) else {}
                target[name] = child
                pending.append((child, value))
            else:
                target[name] = value
    return result


def check_depth(value: Any, max_depth: int) -> None:
    """Raise ``NestingTooDeepError`` if objects and arrays in ``value`` nest deeper than
    ``max_depth``; a root object or array is depth 1, scalars add no depth (so a scalar
    passes any limit, and any container fails a limit below 1).

    Iterative (an explicit stack), so a 100,000-deep array is refused without reaching
    Python's recursion limit; it stops at the first container past the limit, so the cost is
    bounded by the size of the value (and a cyclic value is refused, not looped over).
    """
    # Level by level: only containers are kept, and no (node, depth) pair is built per node.
    level = [value] if isinstance(value, _CONTAINERS) else []
    depth = 0
    while level:
        depth += 1
        if depth > max_depth:
            raise NestingTooDeepError(max_depth)
        below: list[Any] = []
        for node in level:
            for child in node.values() if isinstance(node, dict) else node:
                if isinstance(child, _CONTAINERS):
                    below.append(child)
        level = below


def make_json_patch(old: dict[str, Any], new: dict[str, Any]) -> list[dict[str, Any]]:
    """The RFC 6902 operations that turn ``old`` into ``new``:
    ``apply_json_patch(old, make_json_patch(old, new)) == new``, with values copied (the
    result shares nothing with ``new``). Equal documents give ``[]``.

    Computed by ``jsonpatch.make_patch``; items appended to an array become one ``add`` each
    with the item's index (``/messages/50``), not a rewrite of the array. Its cost grows
    with the size of the documents (it compares every array item), about 1 ms for a 5 KB
    conversation: a client that knows it only appended should send that ``add`` itself.

    Raises ``PatchError`` if either argument is not a JSON object, if they differ in a member
    whose name is not a string, or if they nest too deeply to compare.
    """
    for name, value in (("old", old), ("new", new)):
        if not isinstance(value, dict):
            raise PatchError(f"the {name} document must be a JSON object, not {_json_type(value)}")
    try:
        return jsonpatch.make_patch(old, new).patch
    except MemoryError:
        raise
    except RecursionError:
        raise PatchError("the documents nest too deeply to compare") from None
    except Exception as exc:
        # jsonpatch raises TypeError for a member name that no pointer can refer to.
        raise PatchError(
            f"cannot express the difference as a JSON Patch: {_clip(str(exc))}"
        ) from None


def diff_canonical(old: bytes, new: bytes) -> list[dict[str, Any]]:
    """``make_json_patch`` of two documents given as canonical JSON (orjson, sorted keys, as
    the store and ``update()`` hold them), on their bytes when the native module takes them:
    members added, removed or changed, array items changed in place, appended or removed
    from the end (about 2 µs for one message appended to a 5 KB conversation, where
    ``make_json_patch`` takes about 0.5 ms). Otherwise (a member name with an escape, more
    than 64 operations, no native module) ``make_json_patch`` of the parsed documents.
    Raises as ``make_json_patch`` does; ``orjson.JSONDecodeError`` for bytes that are not
    JSON."""
    if _native_diff is not None:
        ops = _native_diff(old, new)
        if ops is not None:
            return ops
    return make_json_patch(orjson.loads(old), orjson.loads(new))


def _json_type(value: Any) -> str:
    """The JSON name of a value's type, for reasons."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return f"a {type(value).__name__} (not JSON)"


def _show(pointer: str) -> str:
    return _clip(pointer) if pointer else "'' (the whole document)"


def _clip(text: str) -> str:
    return text if len(text) <= _CLIP else text[: _CLIP - 3] + "..."
