"""The patch algebra of the fold: RFC 6902 JSON Patch, RFC 7386 merge patch, nesting depth.

Every function here is pure and deterministic: the result depends only on the arguments, the
arguments are never mutated, and anything wrong with a patch is a ``PatchError`` carrying a
short ``reason`` (the fold turns it into a ``REJECTED`` outcome). Nothing is ever half-applied:
a failing patch returns no document at all.

Documents and patches are JSON values as parsed by a JSON library: ``dict`` (string keys),
``list``, ``str``, ``int``, ``float``, ``bool`` and ``None``, without cycles.

**Results share structure with their inputs.** Copying a whole document per patch costs far
more than the fold's budget (``copy.deepcopy`` of a 5 KB conversation is ~300 µs; see
``benchmarks/patch_micro.py``), so each function copies only the objects and arrays on the
paths it changes and keeps every other sub-value of the input in the result as it is.
Neither input is ever changed, but changing the *result* in place can change values that the
input (or the merge patch) also holds: treat all three as read-only, as the fold does (it
serialises the result at once).
"""

from __future__ import annotations

import re
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, Final

import jsonpatch
from jsonpointer import EndOfList, JsonPointer, JsonPointerException

from lukhas_context.schemas.exceptions import LukhasError

__all__ = [
    "DocumentTooDeepError",
    "PatchError",
    "apply_json_patch",
    "apply_merge_patch",
    "check_depth",
    "make_json_patch",
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

#: The JSON containers (a tuple: isinstance with a tuple is faster than with a union).
_CONTAINERS: Final = (dict, list)

#: Longest excerpt of caller-supplied text (paths, op names) quoted in a reason.
_CLIP: Final = 80

#: The containers that the patch being applied has copied, by ``id``. The values keep the
#: copies alive, so no id is reused while a patch is applied.
_OWNED: ContextVar[dict[int, Any]] = ContextVar("lukhas_patch_owned")


class PatchError(LukhasError, ValueError):
    """A patch that cannot be applied to the document, or a document the store cannot hold.

    ``reason`` is a short sentence for people, e.g. ``op 2 (remove): path /a/b does not
    exist``; operations are numbered from 0, as in the patch array.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class DocumentTooDeepError(PatchError):
    """Objects and arrays nest deeper than ``max_depth`` (the root object is depth 1)."""

    def __init__(self, max_depth: int) -> None:
        super().__init__(f"the document nests objects and arrays deeper than {max_depth} levels")
        self.max_depth = max_depth


@dataclass(frozen=True, slots=True)
class _Step:
    """One validated operation: its position, name and the jsonpatch object that applies it."""

    index: int
    name: str
    raw: dict[str, Any]
    operation: jsonpatch.PatchOperation

    @property
    def label(self) -> str:
        return f"op {self.index} ({self.name})"


class _CopyOnWritePointer(JsonPointer):
    """A JSON pointer that copies each object or array it walks through before it is changed.

    jsonpatch resolves every location of every operation through ``to_last`` and then changes
    only the container that it returns (the parent of the target). Walking top-down and
    replacing each child on the way by a copy owned by the running patch means that every
    container jsonpatch changes is such a copy, never a part of the caller's document.
    """

    def to_last(self, doc: Any) -> tuple[Any, str | int | None]:
        if not self.parts:
            return doc, None
        owned = _OWNED.get()
        for part in self.parts[:-1]:
            doc = _walk_owned(self, doc, part, owned)
        return doc, JsonPointer.get_part(doc, self.parts[-1])


def _walk_owned(pointer: JsonPointer, parent: Any, part: str, owned: dict[int, Any]) -> Any:
    """The child of an owned ``parent`` at ``part``, replaced by an owned copy if it is a
    container. Raises what ``JsonPointer.walk`` raises for a missing or invalid step."""
    child = pointer.walk(parent, part)
    if isinstance(child, _CONTAINERS) and id(child) not in owned:
        child = dict(child) if isinstance(child, dict) else list(child)
        parent[JsonPointer.get_part(parent, part)] = child
        owned[id(child)] = child
    return child


def apply_json_patch(doc: dict[str, Any], patch: Any) -> dict[str, Any]:
    """Apply an RFC 6902 JSON Patch (add, remove, replace, move, copy, test) to ``doc``.

    ``patch`` is the parsed JSON value: an array of operation objects. The whole patch is
    checked before any operation runs (op names, required members, pointer syntax, a move
    into its own child), then the operations run in order; members an operation does not use
    are ignored (RFC 6902, section 4). ``test`` compares as section 4.6 says: numbers by value
    (1 equals 1.0), but true and false only equal themselves (1 is not true, 0 is not false).

    Returns the patched document, a new dict (an empty patch returns an equal copy). ``doc``
    is never changed, also when the patch fails; see the module docstring on shared values.

    Raises ``PatchError`` for anything wrong, and nothing else: a patch that is not an array,
    an operation that is not an object, an unknown op, a missing or non-string "path" or
    "from", a missing "value", invalid pointer escapes (``~2``, a trailing ``~``), a pointer
    without a leading ``/``, a location that does not exist, an array index that is out of
    range, has a leading zero or is ``-`` where an existing element is needed, a failing
    ``test``, a value too deeply nested to copy, and a result that is not a JSON object
    ("the document must stay a JSON object").
    """
    if not isinstance(doc, dict):
        raise PatchError(f"the document must be a JSON object, not {_json_type(doc)}")
    steps = _validate(patch)
    owned: dict[int, Any] = {}
    token = _OWNED.set(owned)
    try:
        result: Any = _copy_root(doc, owned)
        for step in steps:
            result = _run(step, _copy_root(result, owned))
    finally:
        _OWNED.reset(token)
    if not isinstance(result, dict):
        raise PatchError("the document must stay a JSON object")
    return result


def _copy_root(root: Any, owned: dict[int, Any]) -> Any:
    """``root`` if the running patch owns it, else an owned shallow copy. A root that is not
    owned is the caller's document, or a value that a move to "" took out of it."""
    if id(root) in owned or not isinstance(root, _CONTAINERS):
        return root
    copied = dict(root) if isinstance(root, dict) else list(root)
    owned[id(copied)] = copied
    return copied


def _validate(patch: Any) -> list[_Step]:
    """The operations of ``patch`` ready to run, or ``PatchError`` for the first malformed
    one. Checked before anything runs, so a malformed patch fails whatever the document."""
    if not isinstance(patch, list):
        raise PatchError(f"a JSON Patch must be an array of operations, not {_json_type(patch)}")
    return [_validate_op(index, raw) for index, raw in enumerate(patch)]


def _validate_op(index: int, raw: Any) -> _Step:
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
    path = _pointer(label, "path", raw["path"])
    if name == "move":
        source = _pointer(label, "from", raw["from"])
        # RFC 6902, 4.4: "from" must not be a proper prefix of "path".
        if source.parts != path.parts and path.contains(source):
            raise PatchError(
                f"{label}: cannot move {_show(raw['from'])} into its own child {_show(raw['path'])}"
            )
    elif name == "copy":
        _pointer(label, "from", raw["from"])
    operation = jsonpatch.JsonPatch.operations[name](raw, pointer_cls=_CopyOnWritePointer)
    return _Step(index, name, raw, operation)


def _pointer(label: str, member: str, value: Any) -> JsonPointer:
    """``value`` parsed as an RFC 6901 pointer, or ``PatchError`` naming the defect."""
    if not isinstance(value, str):
        raise PatchError(f'{label}: "{member}" must be a string, not {_json_type(value)}')
    try:
        return _CopyOnWritePointer(value)
    except JsonPointerException as exc:
        raise PatchError(
            f"{label}: {member} {_show(value)} is not a JSON pointer ({_pointer_defect(exc)})"
        ) from None


def _pointer_defect(exc: JsonPointerException) -> str:
    message = str(exc)
    if message.startswith("Found invalid escape"):
        return "'~' must be followed by 0 or 1"
    return "it must be empty or start with '/'"


def _run(step: _Step, doc: Any) -> Any:
    """Apply one operation to an owned ``doc``; every failure becomes ``PatchError``."""
    try:
        return step.operation.apply(doc)
    except MemoryError:
        # Not a property of the patch: rejecting would make replays disagree.
        raise
    except RecursionError:
        raise PatchError(f"{step.label}: the value nests too deeply to copy or compare") from None
    except Exception as exc:
        # Any other exception (jsonpatch's, jsonpointer's, or a KeyError/IndexError/TypeError
        # from a corner it does not wrap) is a property of this patch and this document, so
        # it is deterministic; letting it escape would stop the fold on a poison event.
        raise PatchError(_failure(step, exc, doc)) from None


def _failure(step: _Step, exc: Exception, doc: Any) -> str:
    """The reason an operation failed. ``doc`` is the document before the operation (a
    failed add, remove, replace, copy or test changes nothing; a failed move has only its
    removal done, which changes no pointer the reason resolves)."""
    path = _show(step.raw["path"])
    if isinstance(exc, jsonpatch.JsonPatchTestFailed):
        if _resolves(step.operation.pointer, doc):
            return f"{step.label}: the value at {path} is not equal to the tested value"
        return f"{step.label}: path {path} does not exist"
    if isinstance(exc, jsonpatch.JsonPatchPathNotFound):
        # move and copy raise it only for "from"; remove and replace only for "path".
        if step.name in ("move", "copy"):
            return f"{step.label}: from {_show(step.raw['from'])} does not exist"
        return f"{step.label}: path {path} does not exist"
    where = f"path {path}"
    if step.name in ("move", "copy"):
        where = f"from {_show(step.raw['from'])} to {path}"
    return f"{step.label}: {where}: {_clip(_describe(exc))}"


def _describe(exc: Exception) -> str:
    """jsonpatch's message, reworded where it names its internals rather than the JSON."""
    message = str(exc)
    if message == "can't insert outside of list":
        return "the array index is out of range"
    if message.startswith("member '") and "' not found" in message:
        # jsonpointer appends the whole object it searched: keep documents out of reasons.
        return message[: message.index("' not found")] + "' does not exist"
    if message.endswith("is not a valid sequence index"):
        return message.replace("a valid sequence index", "an array index (0 or 1-9 then digits)")
    if message == "invalid array index '-'":
        return "'-' (past the end of an array) names no element"
    if "EndOfList" in message:
        return "'-' (past the end of an array) has no members"
    if message.startswith("Document '<class"):
        return "a step of the pointer goes into a value that is not an object or array"
    if message.startswith("Cannot apply token"):
        return "a step of the pointer goes into a string"
    return message or type(exc).__name__


def _resolves(pointer: JsonPointer, doc: Any) -> bool:
    """Whether ``pointer`` names an existing value of ``doc`` (without copying anything)."""
    missing = object()
    try:
        found = JsonPointer.resolve(pointer, doc, missing)
    except Exception:
        # Only a diagnosis for the reason: any failure to resolve means "does not exist".
        return False
    return found is not missing and not isinstance(found, EndOfList)


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
    """Raise ``DocumentTooDeepError`` if objects and arrays in ``value`` nest deeper than
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
            raise DocumentTooDeepError(max_depth)
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
