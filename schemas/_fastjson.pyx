# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""Canonical JSON as bytes, without parsing it into Python objects: a JSON Patch applied by
splicing (``patch_document``, the fold's native patch path) and the JSON Patch between two
documents (``diff_documents``, for ``update()`` and watchers' deltas).

A stored document is canonical JSON (orjson, sorted keys, no whitespace), and orjson's output
is compositional: the canonical bytes of a container are its members' canonical bytes joined
by its brackets, commas and colons, in key order. So:

* an ``add``, ``replace``, ``remove`` or ``test`` on a path through objects and arrays is a
  splice of the document's bytes with the canonical bytes of the value, which is what
  ``orjson.dumps(apply_json_patch(loads(doc), patch), SORT)`` returns;
* two values are equal as canonical JSON exactly when their bytes are, so a diff compares
  members' bytes and goes down only where they differ.

Anything these functions do not take (another operation, a pointer with ``~``, a key with an
escape where the order or the match depends on it, a miss, a failing test, a bound that may be
crossed) gives None, and the caller takes the general path, which decides; they only ever
return what the general path would. Property-tested against it
(tests/unit/processors/test_patch_native.py, tests/unit/schemas/test_diff_native.py).
"""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from libc.string cimport memchr, memcmp, memcpy

import orjson

cdef object _loads = orjson.loads
cdef object _dumps = orjson.dumps
cdef object _JSONDecodeError = orjson.JSONDecodeError
cdef object _JSONEncodeError = orjson.JSONEncodeError
cdef int _SORT = orjson.OPT_SORT_KEYS


cdef bint _needs_checks(const unsigned char* doc, Py_ssize_t size, Py_ssize_t max_depth):
    """True when the general path must look closer: at least max_depth brackets
    (``fold.might_be_too_deep``), or a run of 19 digits, which may be an integer that orjson
    would read as a double (``schemas.numbers``). The same test as ``_fastfold``'s, whose
    put loop keeps its own inline copy."""
    cdef Py_ssize_t i, brackets = 0, digits = 0
    cdef unsigned char c
    for i in range(size):
        c = doc[i]
        if c == 0x7B or c == 0x5B:
            brackets += 1
        if 0x30 <= c <= 0x39:
            digits += 1
            if digits >= 19:
                return True
        else:
            digits = 0
    return brackets >= max_depth


cdef object _S_OP = "op"
cdef object _S_PATH = "path"
cdef object _S_VALUE = "value"
cdef object _S_DASH = "-"
cdef object _S_ADD = "add"
cdef object _S_REPLACE = "replace"
cdef object _S_REMOVE = "remove"
cdef object _S_TEST = "test"


cdef Py_ssize_t _skip(const unsigned char* p, Py_ssize_t i, Py_ssize_t end):
    """Where the canonical JSON value that starts at ``i`` ends; -1 if it does not."""
    cdef int depth = 0
    cdef unsigned char c
    cdef const unsigned char* q
    cdef Py_ssize_t k, n
    if i >= end:
        return -1
    c = p[i]
    if c == 0x22:  # a string: to the next quote not escaped (memchr: most bytes are text)
        i += 1
        while i < end:
            q = <const unsigned char*>memchr(p + i, 0x22, end - i)
            if q == NULL:
                return -1
            k = q - p
            n = 0
            while k - 1 - n >= i and p[k - 1 - n] == 0x5C:
                n += 1
            if n % 2 == 0:
                return k + 1
            i = k + 1
        return -1
    if c == 0x7B or c == 0x5B:
        while i < end:
            c = p[i]
            if c == 0x22:
                i = _skip(p, i, end)
                if i < 0:
                    return -1
                continue
            if c == 0x7B or c == 0x5B:
                depth += 1
            elif c == 0x7D or c == 0x5D:
                depth -= 1
                if depth == 0:
                    return i + 1
            i += 1
        return -1
    while i < end:  # a number, true, false or null (no whitespace: canonical JSON has none)
        c = p[i]
        if c == 0x2C or c == 0x7D or c == 0x5D:
            return i
        if c <= 0x20 or c == 0x22 or c == 0x7B or c == 0x5B or c == 0x3A:
            return -1
        i += 1
    return i


cdef Py_ssize_t _height(const unsigned char* p, Py_ssize_t size):
    """How deep canonical JSON nests (a scalar 0, ``{}`` 1), strings skipped."""
    cdef Py_ssize_t i = 0, depth = 0, most = 0
    cdef unsigned char c
    while i < size:
        c = p[i]
        if c == 0x22:
            i = _skip(p, i, size)
            if i < 0:
                return 1 << 30
            continue
        if c == 0x7B or c == 0x5B:
            depth += 1
            if depth > most:
                most = depth
        elif c == 0x7D or c == 0x5D:
            depth -= 1
        i += 1
    return most


cdef Py_ssize_t _brackets(const unsigned char* p, Py_ssize_t size, Py_ssize_t limit):
    """How many ``{`` and ``[`` bytes there are (in strings too), counted up to ``limit``
    (memchr from one to the next: documents have few, and memchr is vectorised)."""
    cdef Py_ssize_t n = 0
    cdef const unsigned char* q
    cdef const unsigned char* end = p + size
    cdef int c
    for c in (0x7B, 0x5B):
        q = p
        while n < limit:
            q = <const unsigned char*>memchr(q, c, end - q)
            if q == NULL:
                break
            n += 1
            q += 1
    return n


cdef struct _Slot:
    bint in_object        # the parent of the target is an object (else an array)
    bint found            # the target exists
    Py_ssize_t begin      # the target member's start (its key in an object)
    Py_ssize_t value      # the target's value: [value, end)
    Py_ssize_t end
    Py_ssize_t before     # not found: where a new member goes
    bint first            # the target (or a new member) is the parent's first
    bint last             # the target (or a new member) is the parent's last
    Py_ssize_t prev_end   # the end of the member before the target (-1: none)
    Py_ssize_t next_begin # the start of the member after the target (-1: none)


cdef int _index_of(object token, Py_ssize_t* out):
    """RFC 6901 array index: 0, or 1-9 then digits (under 19 of them); -1 otherwise."""
    cdef bytes raw
    cdef Py_ssize_t n, i
    cdef const unsigned char* t
    cdef long long v = 0
    try:
        raw = (<str>token).encode("ascii")
    except UnicodeEncodeError:
        return -1
    n = PyBytes_GET_SIZE(raw)
    t = <const unsigned char*>PyBytes_AS_STRING(raw)
    if n == 0 or n >= 19 or (t[0] == 0x30 and n > 1):
        return -1
    for i in range(n):
        if t[i] < 0x30 or t[i] > 0x39:
            return -1
        v = v * 10 + (t[i] - 0x30)
    out[0] = <Py_ssize_t>v
    return 0


cdef bint _clean_key(const unsigned char* t, Py_ssize_t n):
    """A key orjson writes as its bytes: no quote, backslash or control character."""
    cdef Py_ssize_t i
    for i in range(n):
        if t[i] == 0x22 or t[i] == 0x5C or t[i] < 0x20:
            return False
    return True


cdef inline void _hit(_Slot* slot, Py_ssize_t begin, Py_ssize_t value, Py_ssize_t end,
                      bint first, bint last):
    """The target exists: its member at ``begin``, its value ``[value, end)``."""
    slot.found = True
    slot.begin = begin
    slot.value = value
    slot.end = end
    slot.first = first
    slot.last = last
    if not last:
        slot.next_begin = end + 1


cdef inline void _place(_Slot* slot, Py_ssize_t before, bint first, bint last):
    """The target does not exist: a new member would go at ``before``."""
    slot.before = before
    slot.first = first
    slot.last = last


cdef int _member(const unsigned char* p, Py_ssize_t start, Py_ssize_t stop, bytes token,
                 _Slot* slot):
    """Finds ``token`` in the object ``p[start:stop]``; 0, or -1 when this path cannot tell
    (a key with an escape before the place, malformed bytes)."""
    cdef const unsigned char* t = <const unsigned char*>PyBytes_AS_STRING(token)
    cdef Py_ssize_t n = PyBytes_GET_SIZE(token)
    cdef Py_ssize_t i = start + 1, k_end, v_end, klen, m
    cdef int cmp
    slot.in_object = True
    slot.found = False
    slot.prev_end = -1
    slot.next_begin = -1
    if p[i] == 0x7D:  # {}
        _place(slot, i, True, True)
        return 0
    while True:
        if p[i] != 0x22:
            return -1
        k_end = _skip(p, i, stop)
        if k_end < 0 or p[k_end] != 0x3A:
            return -1
        klen = k_end - i - 2
        if not _clean_key(p + i + 1, klen):
            return -1
        m = klen if klen < n else n
        cmp = memcmp(p + i + 1, t, m)
        if cmp == 0:
            cmp = (klen > n) - (klen < n)
        v_end = _skip(p, k_end + 1, stop)
        if v_end < 0:
            return -1
        if cmp == 0:
            _hit(slot, i, k_end + 1, v_end, slot.prev_end < 0, p[v_end] == 0x7D)
            return 0
        if cmp > 0:  # keys are sorted: the token would go here
            _place(slot, i, slot.prev_end < 0, False)
            return 0
        if p[v_end] == 0x7D:
            _place(slot, v_end, False, True)
            slot.prev_end = v_end
            return 0
        if p[v_end] != 0x2C:
            return -1
        slot.prev_end = v_end
        i = v_end + 1


cdef int _element(const unsigned char* p, Py_ssize_t start, Py_ssize_t stop, Py_ssize_t index,
                  _Slot* slot):
    """Finds element ``index`` of the array ``p[start:stop]`` (``index`` == its length: the
    place past its end); 0, or -1 past that or on malformed bytes."""
    cdef Py_ssize_t i = start + 1, v_end, at = 0
    slot.in_object = False
    slot.found = False
    slot.prev_end = -1
    slot.next_begin = -1
    if p[i] == 0x5D:
        if index != 0:
            return -1
        _place(slot, i, True, True)
        return 0
    while True:
        v_end = _skip(p, i, stop)
        if v_end < 0:
            return -1
        if at == index:
            _hit(slot, i, i, v_end, at == 0, p[v_end] == 0x5D)
            return 0
        slot.prev_end = v_end
        at += 1
        if p[v_end] == 0x5D:
            if at != index:
                return -1
            _place(slot, v_end, False, True)
            return 0
        if p[v_end] != 0x2C:
            return -1
        i = v_end + 1


cdef int _locate(bytes doc, list tokens, bint append_ok, _Slot* slot):
    """The slot of the last token of ``tokens`` in ``doc``; -1 when this path cannot take it
    (a step through a scalar or a missing member, a token that is no index of its array)."""
    cdef const unsigned char* p = <const unsigned char*>PyBytes_AS_STRING(doc)
    cdef Py_ssize_t start = 0, stop = PyBytes_GET_SIZE(doc), index, i, last = len(tokens) - 1
    cdef bytes raw
    for i in range(last + 1):
        token = tokens[i]
        if p[start] == 0x7B:
            try:
                raw = (<str>token).encode()
            except UnicodeEncodeError:
                return -1
            if not _clean_key(<const unsigned char*>PyBytes_AS_STRING(raw), PyBytes_GET_SIZE(raw)):
                return -1
            if _member(p, start, stop, raw, slot) < 0:
                return -1
        elif p[start] == 0x5B:
            if i == last and append_ok and token == _S_DASH:
                _past_end(p, start, stop, slot)
            elif _index_of(token, &index) < 0 or _element(p, start, stop, index, slot) < 0:
                return -1
        else:
            return -1
        if i < last:
            if not slot.found:
                return -1
            start = slot.value
            stop = slot.end
    return 0


cdef void _past_end(const unsigned char* p, Py_ssize_t start, Py_ssize_t stop, _Slot* slot):
    """The place past the end of the array ``p[start:stop]`` (whose last byte is ``]``)."""
    slot.in_object = False
    slot.found = False
    slot.next_begin = -1
    _place(slot, stop - 1, p[start + 1] == 0x5D, True)
    slot.prev_end = -1 if slot.first else stop - 1


cdef bytes _splice(bytes doc, Py_ssize_t a, Py_ssize_t b, const char* one, Py_ssize_t n1,
                   bytes two, const char* three, Py_ssize_t n3):
    """``doc[:a] + one + two + three + doc[b:]`` in one allocation (``two`` may be None)."""
    cdef Py_ssize_t size = PyBytes_GET_SIZE(doc)
    cdef Py_ssize_t n2 = 0 if two is None else PyBytes_GET_SIZE(two)
    cdef bytes out = PyBytes_FromStringAndSize(NULL, a + n1 + n2 + n3 + size - b)
    cdef char* o = PyBytes_AS_STRING(out)
    cdef const char* d = PyBytes_AS_STRING(doc)
    memcpy(o, d, a)
    o += a
    memcpy(o, one, n1)
    o += n1
    if n2:
        memcpy(o, PyBytes_AS_STRING(two), n2)
        o += n2
    memcpy(o, three, n3)
    o += n3
    memcpy(o, d + b, size - b)
    return out


cdef bytes _insert(bytes doc, _Slot* slot, bytes member):
    """``member`` put in at the slot's place, with the comma it needs."""
    cdef Py_ssize_t at = slot.before
    if slot.first and slot.last:
        return _splice(doc, at, at, "", 0, member, "", 0)
    if not slot.last:
        return _splice(doc, at, at, "", 0, member, ",", 1)
    return _splice(doc, at, at, ",", 1, member, "", 0)


cdef object _appended(bytes doc, list ops, Py_ssize_t max_depth, Py_ssize_t max_document_bytes,
                      list hint):
    """The one-operation patch ``ops`` when it appends to the array a hint remembers: its
    new document, or None (not that case: the caller scans). The hint (``_patched``) is
    ``[document, path, index of the array's "]" in it]``, set by the append that made the
    document: the same path in it leads to the same array, and that append kept the
    document within ``max_depth``, so only the new value's depth needs checking."""
    cdef Py_ssize_t close, steps
    raw = ops[0]
    if type(raw) is not dict or (<dict>raw).get(_S_OP) != _S_ADD:
        return None
    path = (<dict>raw).get(_S_PATH)
    if type(path) is not str or path != hint[1] or _S_VALUE not in <dict>raw:
        return None
    try:
        value = _dumps((<dict>raw)[_S_VALUE], option=_SORT)
    except _JSONEncodeError:
        return None
    steps = (<str>path).count("/")
    if steps + _height(<const unsigned char*>PyBytes_AS_STRING(value),
                       PyBytes_GET_SIZE(value)) > max_depth:
        return None
    close = hint[2]
    if PyBytes_GET_SIZE(doc) + 1 + PyBytes_GET_SIZE(value) > max_document_bytes:
        return None
    out = _splice(doc, close, close, ",", 1, value, "", 0)  # the array has an item already
    hint[0] = out
    hint[2] = close + 1 + PyBytes_GET_SIZE(value)
    return out


cdef object _patched(bytes doc, bytes patch, Py_ssize_t max_depth,
                             Py_ssize_t max_document_bytes, Py_ssize_t max_operations,
                             Py_ssize_t max_work, list hint=None):
    """The canonical document after the JSON Patch ``patch``, spliced into the canonical
    ``doc``; None when this path does not take the patch (see above).

    ``hint``: a list the caller keeps per context (``[None, None, 0]`` to start): a patch of
    one ``add`` to an array's end records where that array now ends in the new document, so
    the next such append to the same array of that same document (the same object) splices
    there without scanning it (a conversation's appends in one round); any other patch
    clears it."""
    cdef _Slot slot
    cdef Py_ssize_t height, a, b, steps, close = -1
    cdef Py_ssize_t size = PyBytes_GET_SIZE(patch)
    # The general path's first checks: the patch's size, its nesting (fewer brackets than
    # max_depth cannot nest deeper) and no integer that may lie outside 64 bits. The work a
    # patch may do (``PatchLimits.max_work``) counts at most its own bytes here: only add
    # and replace insert anything, and only what the patch holds.
    if size > max_document_bytes or size > max_work:
        return None
    if _needs_checks(<const unsigned char*>PyBytes_AS_STRING(patch), size, max_depth):
        return None
    try:
        ops = _loads(patch)
    except _JSONDecodeError:
        return None
    if type(ops) is not list or len(<list>ops) > max_operations:
        return None
    if hint is not None:
        if hint[0] is doc and len(<list>ops) == 1:
            out = _appended(doc, <list>ops, max_depth, max_document_bytes, hint)
            if out is not None:
                return out
        hint[0] = None
    # The document must be within max_depth, as the general path checks it after the patch:
    # fewer brackets than that (inside strings too: an upper bound) cannot nest deeper, and
    # counting them is a fraction of walking the document.
    if _brackets(<const unsigned char*>PyBytes_AS_STRING(doc), PyBytes_GET_SIZE(doc),
                 max_depth) >= max_depth:
        height = _height(<const unsigned char*>PyBytes_AS_STRING(doc), PyBytes_GET_SIZE(doc))
        if height > max_depth:
            return None
    for raw in <list>ops:
        if type(raw) is not dict:
            return None
        name = (<dict>raw).get(_S_OP)
        path = (<dict>raw).get(_S_PATH)
        if type(name) is not str or type(path) is not str:
            return None
        if not path or (<str>path)[0] != "/" or "~" in <str>path:
            return None
        tokens = (<str>path)[1:].split("/")
        steps = len(tokens)
        if steps > max_depth:
            return None
        value = None
        if name == _S_ADD or name == _S_REPLACE or name == _S_TEST:
            if _S_VALUE not in <dict>raw:
                return None
            try:
                value = _dumps((<dict>raw)[_S_VALUE], option=_SORT)
            except _JSONEncodeError:
                return None
            if steps + _height(<const unsigned char*>PyBytes_AS_STRING(value),
                               PyBytes_GET_SIZE(value)) > max_depth:
                return None
        elif name != _S_REMOVE:
            return None  # move, copy, or no operation at all: the general path
        if _locate(doc, tokens, name == _S_ADD, &slot) < 0:
            return None
        if name == _S_ADD and not (slot.in_object and slot.found):
            if slot.found:  # an array index: the new element goes before the one there
                doc = _splice(doc, slot.begin, slot.begin, "", 0, value, ",", 1)
            elif slot.in_object:
                key = (<str>tokens[steps - 1]).encode()
                doc = _insert(doc, &slot, b'"' + key + b'":' + value)
            else:
                close = slot.before + (0 if slot.first else 1) + PyBytes_GET_SIZE(value)
                doc = _insert(doc, &slot, value)
            continue
        if not slot.found:
            return None  # the general path says what is missing
        if name == _S_TEST:
            if doc[slot.value:slot.end] != value:
                return None  # maybe equal as JSON (1 and 1.0), maybe not: the general path
        elif name == _S_REMOVE:
            if slot.first and slot.last:
                a, b = slot.begin, slot.end
            elif not slot.last:
                a, b = slot.begin, slot.next_begin
            else:
                a, b = slot.prev_end, slot.end
            doc = _splice(doc, a, b, "", 0, None, "", 0)
        else:  # replace, or add over an existing member
            doc = _splice(doc, slot.value, slot.end, "", 0, value, "", 0)
    if PyBytes_GET_SIZE(doc) > max_document_bytes:
        return None
    if hint is not None and close >= 0 and len(<list>ops) == 1:
        hint[0] = doc  # one append to an array's end: where the array ends now
        hint[1] = path
        hint[2] = close
    return doc


def patch_document(bytes doc, bytes patch, Py_ssize_t max_depth, Py_ssize_t max_document_bytes,
                   Py_ssize_t max_operations, Py_ssize_t max_work, list hint=None):
    """The canonical document after the JSON Patch ``patch`` (its bytes as sent), spliced
    into the canonical ``doc``; None when this path does not take it (the module docstring).
    The bounds are ``fold.Limits``'s: when this returns a document, ``fold.apply`` applies
    the patch and returns the same bytes."""
    return _patched(doc, patch, max_depth, max_document_bytes, max_operations, max_work, hint)


# ---- the JSON Patch between two canonical documents ----

cdef class _Diff:
    """The state of one diff: both documents, the operations so far and their limit."""
    cdef bytes old
    cdef bytes new
    cdef const unsigned char* a
    cdef const unsigned char* b
    cdef list ops
    cdef Py_ssize_t max_ops

    def __cinit__(self, bytes old, bytes new, Py_ssize_t max_ops):
        self.old = old
        self.new = new
        self.a = <const unsigned char*>PyBytes_AS_STRING(old)
        self.b = <const unsigned char*>PyBytes_AS_STRING(new)
        self.ops = []
        self.max_ops = max_ops

    cdef int op(self, str name, str path, Py_ssize_t b0, Py_ssize_t b1) except -2:
        """Adds one operation (its value: ``new[b0:b1]`` parsed, when ``b1 > b0``); -1 once
        there are more than ``max_ops``."""
        if b1 > b0:
            self.ops.append({"op": name, "path": path, "value": _loads(self.new[b0:b1])})
        else:
            self.ops.append({"op": name, "path": path})
        return -1 if len(self.ops) > self.max_ops else 0

    cdef int value(self, Py_ssize_t a0, Py_ssize_t a1, Py_ssize_t b0, Py_ssize_t b1, str path,
                   int depth) except -2:
        """The operations that turn ``old[a0:a1]`` into ``new[b0:b1]`` at ``path``; -1: give
        up (the caller's general diff decides)."""
        cdef const unsigned char* a = self.a
        cdef const unsigned char* b = self.b
        if _same(a, a0, a1, b, b0, b1):
            return 0
        if depth > 64:
            return -1
        if a[a0] == 0x7B and b[b0] == 0x7B:
            return self.members(a0, a1, b0, b1, path, depth)
        if a[a0] == 0x5B and b[b0] == 0x5B:
            return self.elements(a0, a1, b0, b1, path, depth)
        return self.op("replace", path, b0, b1)

    cdef int members(self, Py_ssize_t a0, Py_ssize_t a1, Py_ssize_t b0, Py_ssize_t b1,
                     str path, int depth) except -2:
        """Two objects, member by member in key order (both sorted: a key out of order, as
        in bytes that are not canonical, gives up)."""
        cdef const unsigned char* a = self.a
        cdef const unsigned char* b = self.b
        cdef Py_ssize_t i = a0 + 1, j = b0 + 1, ik = 0, iv = 0, jk = 0, jv = 0
        cdef Py_ssize_t pa = -1, pb = -1, pan = 0, pbn = 0  # the keys before, on each side
        cdef int cmp
        cdef bint more_a = a[i] != 0x7D, more_b = b[j] != 0x7D
        cdef bint new_a = True, new_b = True  # read the member at i (j) first
        while more_a or more_b:
            if more_a and new_a:
                if _read_member(a, i, a1, pa, pan, &ik, &iv) < 0:
                    return -1
                new_a = False
            if more_b and new_b:
                if _read_member(b, j, b1, pb, pbn, &jk, &jv) < 0:
                    return -1
                new_b = False
            if more_a and more_b:
                cmp = _compare(a + i + 1, ik - i - 2, b + j + 1, jk - j - 2)
            else:
                cmp = -1 if more_a else 1
            if cmp == 0:
                if not _same(a, ik + 1, iv, b, jk + 1, jv):
                    child = path + "/" + _token(self.old[i + 1:ik - 1])
                    if self.value(ik + 1, iv, jk + 1, jv, child, depth + 1) < 0:
                        return -1
            elif cmp < 0:  # only in the old one
                child = path + "/" + _token(self.old[i + 1:ik - 1])
                if self.op("remove", child, 0, 0) < 0:
                    return -1
            else:  # only in the new one
                child = path + "/" + _token(self.new[j + 1:jk - 1])
                if self.op("add", child, jk + 1, jv) < 0:
                    return -1
            if cmp <= 0:
                pa, pan = i + 1, ik - i - 2
                more_a = a[iv] == 0x2C
                i = iv + 1
                new_a = True
            if cmp >= 0:
                pb, pbn = j + 1, jk - j - 2
                more_b = b[jv] == 0x2C
                j = jv + 1
                new_b = True
        return 0

    cdef int elements(self, Py_ssize_t a0, Py_ssize_t a1, Py_ssize_t b0, Py_ssize_t b1,
                      str path, int depth) except -2:
        """Two arrays, item by item: the common length compared in place, then the new one's
        further items added at its end, or the old one's further items removed from its end
        (last first)."""
        cdef const unsigned char* a = self.a
        cdef const unsigned char* b = self.b
        cdef Py_ssize_t i = a0 + 1, j = b0 + 1, iv, jv, index = 0, k
        cdef bint more_a = a[i] != 0x5D, more_b = b[j] != 0x5D
        cdef Py_ssize_t kept = a1 - a0 - 1
        if more_a and b1 - b0 > kept + 1 and b[b0 + kept] == 0x2C and (
                memcmp(a + a0, b + b0, kept) == 0):
            # The new array starts with every item of the old one (the bytes up to its ``]``
            # and then a comma): only its further items are new, each appended (``-``: no
            # need to count the old ones).
            j = b0 + kept + 1
            while True:
                jv = _skip(b, j, b1)
                if jv < 0 or (b[jv] != 0x2C and b[jv] != 0x5D):
                    return -1
                if self.op("add", path + "/-", j, jv) < 0:
                    return -1
                if b[jv] == 0x5D:
                    return 0
                j = jv + 1
        while more_a and more_b:
            iv = _skip(a, i, a1)
            jv = _skip(b, j, b1)
            if iv < 0 or jv < 0 or (a[iv] != 0x2C and a[iv] != 0x5D):
                return -1
            if b[jv] != 0x2C and b[jv] != 0x5D:
                return -1
            if not _same(a, i, iv, b, j, jv):
                if self.value(i, iv, j, jv, f"{path}/{index}", depth + 1) < 0:
                    return -1
            more_a = a[iv] == 0x2C
            more_b = b[jv] == 0x2C
            i, j = iv + 1, jv + 1
            index += 1
        while more_b:
            jv = _skip(b, j, b1)
            if jv < 0 or (b[jv] != 0x2C and b[jv] != 0x5D):
                return -1
            if self.op("add", f"{path}/{index}", j, jv) < 0:
                return -1
            more_b = b[jv] == 0x2C
            j = jv + 1
            index += 1
        if more_a:
            k = index
            while more_a:
                iv = _skip(a, i, a1)
                if iv < 0 or (a[iv] != 0x2C and a[iv] != 0x5D):
                    return -1
                more_a = a[iv] == 0x2C
                i = iv + 1
                k += 1
            while k > index:
                k -= 1
                if self.op("remove", f"{path}/{k}", 0, 0) < 0:
                    return -1
        return 0


cdef inline bint _same(const unsigned char* a, Py_ssize_t a0, Py_ssize_t a1,
                       const unsigned char* b, Py_ssize_t b0, Py_ssize_t b1):
    """Two spans hold the same bytes: as canonical JSON, the same value."""
    return a1 - a0 == b1 - b0 and memcmp(a + a0, b + b0, a1 - a0) == 0


cdef int _compare(const unsigned char* x, Py_ssize_t n, const unsigned char* y, Py_ssize_t m):
    """Byte order of two member names, as orjson sorts them."""
    cdef int cmp = memcmp(x, y, n if n < m else m)
    if cmp == 0:
        cmp = (n > m) - (n < m)
    return cmp


cdef Py_ssize_t _key(const unsigned char* p, Py_ssize_t i, Py_ssize_t end, Py_ssize_t prev,
                     Py_ssize_t prev_size):
    """Where the member name at ``i`` ends (at its colon); -1 unless it is a string without
    escapes, followed by a colon, after the member name at ``prev`` in byte order."""
    cdef Py_ssize_t k
    if p[i] != 0x22:
        return -1
    k = _skip(p, i, end)
    if k < 0 or k >= end or p[k] != 0x3A or not _clean_key(p + i + 1, k - i - 2):
        return -1
    if prev >= 0 and _compare(p + prev, prev_size, p + i + 1, k - i - 2) >= 0:
        return -1
    return k


cdef int _read_member(const unsigned char* p, Py_ssize_t i, Py_ssize_t end, Py_ssize_t prev,
                      Py_ssize_t prev_size, Py_ssize_t* key_end, Py_ssize_t* value_end):
    """The object member at ``i``: where its name ends (its colon) and where its value ends
    (a comma or the closing brace follows); -1 for anything else (``_key``)."""
    key_end[0] = _key(p, i, end, prev, prev_size)
    if key_end[0] < 0:
        return -1
    value_end[0] = _skip(p, key_end[0] + 1, end)
    if value_end[0] < 0 or (p[value_end[0]] != 0x2C and p[value_end[0]] != 0x7D):
        return -1
    return 0


cdef str _token(bytes key):
    """The JSON Pointer token of a member name without escapes (RFC 6901: ``~`` as ``~0``,
    ``/`` as ``~1``)."""
    cdef str text = key.decode()
    if "~" in text:
        text = text.replace("~", "~0")
    if "/" in text:
        text = text.replace("/", "~1")
    return text


def diff_documents(bytes old, bytes new, Py_ssize_t max_operations=64):
    """The JSON Patch operations that turn the canonical object ``old`` into the canonical
    object ``new`` (values parsed from ``new``: they share nothing with anything), found by
    comparing bytes and going down only where they differ: members added, removed or changed,
    array items changed in place, appended or removed from the end. None when this path does
    not take the two (a member name with an escape, more than ``max_operations`` operations,
    not two objects): the caller falls back to a general diff."""
    cdef Py_ssize_t n = PyBytes_GET_SIZE(old), m = PyBytes_GET_SIZE(new)
    if n < 2 or m < 2 or (<const unsigned char*>PyBytes_AS_STRING(old))[0] != 0x7B:
        return None
    if (<const unsigned char*>PyBytes_AS_STRING(new))[0] != 0x7B:
        return None
    diff = _Diff(old, new, max_operations)
    if diff.value(0, n, 0, m, "", 0) < 0:
        return None
    return diff.ops
