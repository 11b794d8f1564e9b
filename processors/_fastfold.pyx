# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""The fold's hot loop in C, for the commonest events: an unconditional Put whose payload is
exactly ``EventCodec.simple_put``'s shape, and a JSON Patch without fence or metadata (an
expected checksum, version or TTL is fine: ``update()`` sends them) of a live context, made
of ``add``, ``replace``, ``remove`` and ``test`` operations, which it applies by splicing the
stored canonical document (``schemas._fastjson.patch_document``). It computes what the
pure-Python path (``processors.round.PartitionFolder._fold_one``) computes, byte for byte;
the tests fold
generated logs through both and compare (tests/unit/processors/test_fold_native.py,
test_patch_native.py). Every other record is handed to ``slow(message)`` in log order.
``recent`` is ``state.dedupe.DedupeWindow.ids``: an event id already in it goes to ``slow``,
which decides; a new one is inserted as ``DedupeWindow.admit`` inserts it.

Why native: after aiokafka has built its records, the bare consumer's budget is about 3 µs a
record here, and interpreted Python spends about 12 µs on a Put's shape check, canonical
JSON, record, change encoding and batch append, and 60-100 µs on a Patch (decode, validate,
parse the document, apply, serialise it again).
"""

from cpython.bytearray cimport PyByteArray_AS_STRING, PyByteArray_GET_SIZE, PyByteArray_Resize
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.dict cimport PyDict_Next
from cpython.object cimport Py_GE, PyObject, PyObject_RichCompareBool
from cpython.ref cimport Py_INCREF
from cpython.tuple cimport PyTuple_SET_ITEM


cdef extern from "Python.h":
    ctypedef struct PyTypeObject
    object PyType_GenericAlloc(PyTypeObject* type, Py_ssize_t nitems)
    object _PyLong_FromByteArray(const unsigned char* data, size_t n, int little_endian,
                                 int is_signed)
    void PyObject_GC_UnTrack(object o)
from libc.string cimport memcmp, memcpy

import orjson
import xxhash

cdef object _loads = orjson.loads
cdef object _dumps = orjson.dumps
cdef object _JSONDecodeError = orjson.JSONDecodeError
cdef object _JSONEncodeError = orjson.JSONEncodeError
cdef int _SORT = orjson.OPT_SORT_KEYS
cdef object _xxh3 = xxhash.xxh3_64_digest
cdef object _xxh3_int = xxhash.xxh3_64_intdigest
from lukhas_context.processors.fold import MAX_TTL_MS
from lukhas_context.schemas._fastjson import patch_document as _patch_document

cdef long long _MAX_TTL_MS = MAX_TTL_MS
from lukhas_context.state.journal import ENTRY

#: ``_journal`` writes the fields of ``state.journal.ENTRY`` at their offsets in this layout;
#: the module refuses to load if the journal's layout changed without it.
if ENTRY.format != "<qBq16sQ":
    raise ImportError(f"state.journal.ENTRY is {ENTRY.format!r}; _fastfold writes '<qBq16sQ'")
cdef Py_ssize_t _ENTRY_SIZE = ENTRY.size


cdef inline void _put_le64(char* p, unsigned long long v):
    cdef int i
    for i in range(8):
        p[i] = <char>((v >> (8 * i)) & 0xFF)


cdef int _journal(bytearray entries, long long offset, long long version, const char* event_id,
                  unsigned long long payload_hash) except -1:
    """Appends one APPLIED entry: offset | status 0 | version | event id | payload hash."""
    cdef Py_ssize_t size = PyByteArray_GET_SIZE(entries)
    PyByteArray_Resize(entries, size + _ENTRY_SIZE)
    cdef char* p = PyByteArray_AS_STRING(entries) + size
    _put_le64(p, <unsigned long long>offset)
    p[8] = 0
    _put_le64(p + 9, <unsigned long long>version)
    memcpy(p + 17, event_id, 16)
    _put_le64(p + 33, payload_hash)
    return 0


cdef bint _needs_checks(const unsigned char* doc, Py_ssize_t size, Py_ssize_t max_depth):
    """True when the general path must look closer: at least max_depth brackets
    (``fold.might_be_too_deep``), or a run of 19 digits, which may be an integer that orjson
    would read as a double (``schemas.numbers``)."""
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


include "../schemas/_varint.pxi"


cdef bint _framed(const unsigned char* v, const unsigned char* k, Py_ssize_t n, bytes header):
    """The event's frame is the current schema's (``header``) and its context id, at byte
    27, is the record's ASCII key ``k`` of ``n`` bytes (the caller checked the sizes)."""
    cdef Py_ssize_t i
    if memcmp(v, PyBytes_AS_STRING(header), 10) != 0 or memcmp(v + 27, k, n) != 0:
        return False
    for i in range(n):
        if k[i] >= 0x80:
            return False
    return True


cdef Py_ssize_t _doc_start(bytes value, bytes key, bytes header):
    """``EventCodec.simple_put`` in C: where the document starts, or -1."""
    cdef Py_ssize_t n = PyBytes_GET_SIZE(key)
    cdef Py_ssize_t size = PyBytes_GET_SIZE(value)
    cdef const unsigned char* v = <const unsigned char*>PyBytes_AS_STRING(value)
    cdef const unsigned char* k = <const unsigned char*>PyBytes_AS_STRING(key)
    cdef Py_ssize_t p
    cdef long long length
    if n <= 0 or n >= 64 or size < 28 + n + 1 + 4:
        return -1
    if v[26] != (n << 1) or v[27 + n] != 0:
        return -1
    if v[size - 4] != 0 or v[size - 3] != 0 or v[size - 2] != 0 or v[size - 1] != 0:
        return -1
    if not _framed(v, k, n, header):
        return -1
    p = _read_long(v, 28 + n, size - 4, &length)
    if p < 0 or length < 0 or p + length != size - 4:
        return -1  # a negative length, or not the document up to the four nulls
    return p


cdef bytes _change(bytes header, bytes value, Py_ssize_t n, long long version, char kind,
                   bytes canonical, bytes checksum, object expires, long long offset,
                   long long log_time):
    """``ChangeCodec.encode_fields`` into one buffer: ``kind`` is the ChangeKind's wire byte
    (0 PUT, 2 PATCH), ``expires`` None or the expiry in ms."""
    cdef unsigned long long ze = 0 if expires is None else _zigzag(<long long>expires)
    cdef Py_ssize_t expiry_size = 1 if expires is None else 1 + _varint_size(ze)
    cdef unsigned long long zv = _zigzag(version)
    cdef unsigned long long zo = _zigzag(offset)
    cdef unsigned long long zt = _zigzag(log_time)
    cdef Py_ssize_t doc_size = PyBytes_GET_SIZE(canonical)
    cdef unsigned long long zd = _zigzag(doc_size)
    cdef Py_ssize_t total = (10 + 1 + n + _varint_size(zv) + 1 + _varint_size(zd) + doc_size
                             + 8 + expiry_size + _varint_size(zo) + 16 + _varint_size(zt))
    cdef bytes out = PyBytes_FromStringAndSize(NULL, total)
    cdef char* p = PyBytes_AS_STRING(out)
    cdef const char* v = PyBytes_AS_STRING(value)
    memcpy(p, PyBytes_AS_STRING(header), 10)
    p += 10
    memcpy(p, v + 26, 1 + n)  # the id's length byte and the id
    p += 1 + n
    p = _put_varint(p, zv)
    p[0] = kind
    p += 1
    p = _put_varint(p, zd)
    memcpy(p, PyBytes_AS_STRING(canonical), doc_size)
    p += doc_size
    memcpy(p, PyBytes_AS_STRING(checksum), 8)
    p += 8
    if expires is None:
        p[0] = 0  # expires_at_ms null
        p += 1
    else:
        p[0] = 2
        p = _put_varint(p + 1, ze)
    p = _put_varint(p, zo)
    memcpy(p, v + 10, 16)  # event_id
    p += 16
    _put_varint(p, zt)
    return out


cdef Py_ssize_t _read_long(const unsigned char* v, Py_ssize_t p, Py_ssize_t end,
                           long long* out):
    """A zig-zag varint long at ``p``: the position after it, or -1 (past ``end``, longer
    than 10 bytes or over 64 bits: the general path decides)."""
    cdef unsigned long long z = 0
    cdef int shift = 0
    cdef unsigned char byte
    while True:
        if p >= end or shift > 63:
            return -1
        byte = v[p]
        p += 1
        if shift == 63 and byte > 1:
            return -1
        z |= (<unsigned long long>(byte & 0x7F)) << shift
        if byte < 0x80:
            break
        shift += 7
    out[0] = <long long>(z >> 1) ^ -(<long long>(z & 1))
    return p


cdef struct _PatchEvent:
    Py_ssize_t start        # the patch: [start, start + size)
    Py_ssize_t size
    Py_ssize_t checksum_at  # the expected checksum's 8 bytes, or -1
    bint has_ttl
    long long ttl
    bint clear_ttl
    bint has_expected
    long long expected


cdef int _patch_event(bytes value, bytes key, bytes header, _PatchEvent* e):
    """Reads a JSON Patch event (``EventCodec.encode`` of ``Patch(JSON_PATCH, ...)``) with no
    fence and no metadata, keyed by its ASCII context id; 0, or -1 for any other record."""
    cdef Py_ssize_t n = PyBytes_GET_SIZE(key)
    cdef Py_ssize_t size = PyBytes_GET_SIZE(value)
    cdef const unsigned char* v = <const unsigned char*>PyBytes_AS_STRING(value)
    cdef const unsigned char* k = <const unsigned char*>PyBytes_AS_STRING(key)
    cdef Py_ssize_t p
    cdef long long length
    if n <= 0 or n >= 64 or size < 28 + n + 3 + 6:
        return -1
    if v[26] != (n << 1) or v[27 + n] != 0x04 or v[28 + n] != 0:  # Patch, JSON_PATCH
        return -1
    if v[size - 1] != 0 or v[size - 2] != 0:  # no metadata, no fence
        return -1
    if not _framed(v, k, n, header):
        return -1
    size -= 2
    p = _read_long(v, 29 + n, size, &length)
    if p < 0 or length < 0 or length > size - p:
        return -1
    e.start = p
    e.size = <Py_ssize_t>length
    p += e.size
    if p < size and v[p] == 0:
        e.checksum_at = -1
        p += 1
    elif p + 9 <= size and v[p] == 2:
        e.checksum_at = p + 1
        p += 9
    else:
        return -1
    p = _optional_long(v, p, size, &e.has_ttl, &e.ttl)
    if p < 0 or p >= size or v[p] > 1:
        return -1
    e.clear_ttl = v[p] == 1
    p = _optional_long(v, p + 1, size, &e.has_expected, &e.expected)
    return 0 if p == size else -1


cdef Py_ssize_t _optional_long(const unsigned char* v, Py_ssize_t p, Py_ssize_t end,
                               bint* present, long long* out):
    """A ``["null", "long"]`` union at ``p``: the position after it, or -1."""
    if p >= end or (v[p] != 0 and v[p] != 2):
        return -1
    present[0] = v[p] == 2
    if not present[0]:
        return p + 1
    return _read_long(v, p + 1, end, out)


cdef inline bint _hex_lower(unsigned char c):
    return (0x30 <= c <= 0x39) or (0x61 <= c <= 0x66)


cdef Py_ssize_t _canon_string(const unsigned char* s, Py_ssize_t i, Py_ssize_t n, bint key):
    """The canonical string (orjson's output) starting at ``s[i] == '"'``: the index after
    its closing quote, or -1. UTF-8 is checked as orjson checks it (no surrogates, no
    overlong forms); a key may have no escape (its order would be the decoded one's)."""
    cdef unsigned char c, c1, c2
    cdef int h
    i += 1
    while i < n:
        c = s[i]
        if c == 0x22:
            return i + 1
        if c < 0x20:
            return -1
        if c == 0x5C:
            if key or i + 1 >= n:
                return -1
            c = s[i + 1]
            if c == 0x22 or c == 0x5C or c == 0x62 or c == 0x66 or c == 0x6E or c == 0x72 \
                    or c == 0x74:
                i += 2
                continue
            # \u00XX, only for a control character without a short form, lower-case hex
            if c != 0x75 or i + 6 > n or s[i + 2] != 0x30 or s[i + 3] != 0x30 \
                    or (s[i + 4] != 0x30 and s[i + 4] != 0x31) or not _hex_lower(s[i + 5]):
                return -1
            h = (s[i + 4] - 0x30) * 16 + (s[i + 5] - 0x30 if s[i + 5] <= 0x39 else s[i + 5] - 0x57)
            if h == 0x08 or h == 0x09 or h == 0x0A or h == 0x0C or h == 0x0D:
                return -1
            i += 6
            continue
        if c < 0x80:
            i += 1
        elif 0xC2 <= c <= 0xDF:
            if i + 1 >= n or (s[i + 1] & 0xC0) != 0x80:
                return -1
            i += 2
        elif 0xE0 <= c <= 0xEF:
            if i + 2 >= n:
                return -1
            c1 = s[i + 1]
            c2 = s[i + 2]
            if (c1 & 0xC0) != 0x80 or (c2 & 0xC0) != 0x80:
                return -1
            if (c == 0xE0 and c1 < 0xA0) or (c == 0xED and c1 >= 0xA0):
                return -1  # overlong, or a surrogate
            i += 3
        elif 0xF0 <= c <= 0xF4:
            if i + 3 >= n:
                return -1
            c1 = s[i + 1]
            if (c1 & 0xC0) != 0x80 or (s[i + 2] & 0xC0) != 0x80 or (s[i + 3] & 0xC0) != 0x80:
                return -1
            if (c == 0xF0 and c1 < 0x90) or (c == 0xF4 and c1 >= 0x90):
                return -1  # overlong, or past U+10FFFF
            i += 4
        else:
            return -1
    return -1


cdef Py_ssize_t _canon_value(const unsigned char* s, Py_ssize_t i, Py_ssize_t n, int depth):
    """The canonical JSON value (orjson's ``OPT_SORT_KEYS`` output) at ``s[i]``: the index
    after it, or -1 for anything else or anything this does not decide (a float, a long
    integer, escapes in a key, a document deeper than ``depth``)."""
    cdef unsigned char c
    cdef Py_ssize_t j, prev, prev_size, key_end, size, digits
    if i >= n or depth <= 0:
        return -1
    c = s[i]
    if c == 0x22:
        return _canon_string(s, i, n, False)
    if c == 0x7B:  # {"k":v,...} with keys in strictly increasing byte order
        i += 1
        if i < n and s[i] == 0x7D:
            return i + 1
        prev = -1
        prev_size = 0
        while True:
            if i >= n or s[i] != 0x22:
                return -1
            key_end = _canon_string(s, i, n, True)
            if key_end < 0 or key_end >= n or s[key_end] != 0x3A:
                return -1
            size = key_end - i - 2
            if prev >= 0:
                j = memcmp(s + prev, s + i + 1, prev_size if prev_size < size else size)
                if j > 0 or (j == 0 and prev_size >= size):
                    return -1  # out of order, or the same key twice
            prev = i + 1
            prev_size = size
            i = _canon_value(s, key_end + 1, n, depth - 1)
            if i < 0 or i >= n:
                return -1
            if s[i] == 0x7D:
                return i + 1
            if s[i] != 0x2C:
                return -1
            i += 1
    if c == 0x5B:
        i += 1
        if i < n and s[i] == 0x5D:
            return i + 1
        while True:
            i = _canon_value(s, i, n, depth - 1)
            if i < 0 or i >= n:
                return -1
            if s[i] == 0x5D:
                return i + 1
            if s[i] != 0x2C:
                return -1
            i += 1
    if c == 0x74:
        return i + 4 if i + 4 <= n and memcmp(s + i, b"true", 4) == 0 else -1
    if c == 0x66:
        return i + 5 if i + 5 <= n and memcmp(s + i, b"false", 5) == 0 else -1
    if c == 0x6E:
        return i + 4 if i + 4 <= n and memcmp(s + i, b"null", 4) == 0 else -1
    # An integer: -?(0|[1-9][0-9]*), at most 18 digits, not "-0"; a float goes to orjson.
    j = i
    if c == 0x2D:
        j += 1
    if j >= n or not (0x30 <= s[j] <= 0x39):
        return -1
    if s[j] == 0x30:
        if j != i or (j + 1 < n and 0x30 <= s[j + 1] <= 0x39):
            return -1  # "-0", or a leading zero
        j += 1
    else:
        digits = 0
        while j < n and 0x30 <= s[j] <= 0x39:
            j += 1
            digits += 1
        if digits > 18:
            return -1
    if j < n and (s[j] == 0x2E or s[j] == 0x65 or s[j] == 0x45):
        return -1
    return j


cdef bint _canonical_object(const unsigned char* s, Py_ssize_t n, int depth):
    return n > 0 and s[0] == 0x7B and _canon_value(s, 0, n, depth) == n


def is_canonical_object(bytes doc, int max_depth=64):
    """Whether ``doc`` is a JSON object exactly as ``orjson.dumps(orjson.loads(doc),
    option=OPT_SORT_KEYS)`` writes it (so the fold can take it as it is); False also for what
    this does not decide (floats, integers of 19 digits or more, escapes in keys)."""
    return _canonical_object(<const unsigned char*>PyBytes_AS_STRING(doc),
                             PyBytes_GET_SIZE(doc), max_depth)


cdef inline void _set(object t, Py_ssize_t i, object item):
    Py_INCREF(item)
    PyTuple_SET_ITEM(t, i, item)


cdef object _new_record(object record_type, object version, object canonical, object checksum,
                        object expires, object offset, object log_time):
    """``record_type(version, canonical, ...)`` (a NamedTuple) built as ``tuple.__new__``
    builds a tuple subclass, without the argument tuple or a Python frame."""
    cdef object r = PyType_GenericAlloc(<PyTypeObject*>record_type, 6)
    _set(r, 0, version)
    _set(r, 1, canonical)
    _set(r, 2, checksum)
    _set(r, 3, expires)
    _set(r, 4, offset)
    _set(r, 5, log_time)
    # Ints, bytes and None only: no cycle can pass through it, so the collector need not
    # look at it (CPython untracks such tuples itself, at their first collection; untracked
    # now, the hundreds of thousands a second the fold makes never cost a collection).
    PyObject_GC_UnTrack(r)
    return r


cdef object _change_tuple(object key, object value, object headers):
    """``(key, value, headers)``, untracked: ``headers`` is the shared empty list, which
    never refers back, and the rest are bytes (see ``_new_record``)."""
    cdef tuple t = (key, value, headers)
    PyObject_GC_UnTrack(t)
    return t


cdef object _window_value(long long offset, unsigned long long payload_hash):
    """``DedupeWindow``'s value of an id: ``offset << 64 | payload hash``, one int."""
    cdef unsigned char buf[16]
    _put_le64(<char*>buf, payload_hash)
    _put_le64(<char*>buf + 8, <unsigned long long>offset)
    return _PyLong_FromByteArray(buf, 16, 1, 0)


def fold_simple(list messages, long long first, bytes event_header, bytes change_header,
                dict pending, object get, object record_type, Py_ssize_t max_doc_bytes,
                Py_ssize_t max_depth, Py_ssize_t max_operations, Py_ssize_t max_work,
                dict recent, bytearray entries, list changes, object no_headers, object slow):
    """Folds ``messages`` (offsets below ``first`` skipped): plain Puts, and JSON Patches of
    live contexts that ``schemas._fastjson.patch_document`` takes, of event ids not seen in
    the dedupe window here; every other record through ``slow(message)``. Returns how many
    events this loop applied."""
    cdef Py_ssize_t applied = 0
    cdef Py_ssize_t start, size, n
    cdef long long offset, version
    cdef unsigned long long payload_hash
    cdef const unsigned char* v
    cdef char kind
    cdef _PatchEvent e
    # Per context, where its last append left an array's end (``_fastjson._patched``): a
    # conversation's appends in one round splice there without scanning the document.
    cdef dict hints = {}
    for m in messages:
        offset = m.offset
        if offset < first:
            continue
        key = m.key
        value = m.value
        if type(key) is not bytes or type(value) is not bytes:
            slow(m)
            continue
        size = PyBytes_GET_SIZE(value)
        v = <const unsigned char*>PyBytes_AS_STRING(value)
        start = _doc_start(<bytes>value, <bytes>key, event_header)
        if start >= 0:
            if size - 4 - start > max_doc_bytes or _needs_checks(v + start, size - 4 - start,
                                                                 max_depth):
                slow(m)
                continue
            event_id = value[10:26]
            if event_id in recent:  # a retry, or an id reused: the general path decides
                slow(m)
                continue
            if _canonical_object(v + start, size - 4 - start, max_depth):
                canonical = value[start:size - 4]  # as orjson would write it (the common case)
            else:
                try:
                    obj = _loads(value[start:size - 4])
                except _JSONDecodeError:
                    slow(m)
                    continue
                if type(obj) is not dict:
                    slow(m)
                    continue
                try:
                    canonical = _dumps(obj, option=_SORT)
                except _JSONEncodeError:
                    slow(m)
                    continue
                if PyBytes_GET_SIZE(canonical) > max_doc_bytes:
                    slow(m)
                    continue
            record = pending.get(key)
            if record is None:
                record = get(key)
            if record is not None and type(record) is not record_type:
                slow(m)
                continue
            version = 1 if record is None else (<tuple>record)[0] + 1
            checksum = _xxh3(canonical)
            expires = None
            kind = 0  # PUT
        else:
            # A JSON Patch. What the general path would not apply (a TTL both set and
            # cleared or out of range, a context that does not exist or has expired, an
            # expected version that is not the context's) it decides.
            if _patch_event(<bytes>value, <bytes>key, event_header, &e) < 0:
                slow(m)
                continue
            if e.has_ttl and (e.clear_ttl or e.ttl <= 0 or e.ttl > _MAX_TTL_MS):
                slow(m)
                continue
            event_id = value[10:26]
            if event_id in recent:
                slow(m)
                continue
            record = pending.get(key)
            if record is None:
                record = get(key)
            if record is None or type(record) is not record_type or (<tuple>record)[1] is None:
                slow(m)
                continue
            expires = (<tuple>record)[3]
            if expires is not None and not m.timestamp < expires:
                slow(m)
                continue
            if e.has_expected and e.expected != (<tuple>record)[0]:
                slow(m)
                continue
            hint = hints.get(key)
            if hint is None:
                hint = hints[key] = [None, None, 0]
            canonical = _patch_document((<tuple>record)[1], value[e.start:e.start + e.size],
                                         max_depth, max_doc_bytes, max_operations, max_work,
                                         hint)
            if canonical is None:
                slow(m)
                continue
            checksum = _xxh3(canonical)
            if e.checksum_at >= 0 and memcmp(v + e.checksum_at, PyBytes_AS_STRING(checksum), 8):
                slow(m)  # not the document the writer expected: the general path rejects
                continue
            if e.clear_ttl:
                expires = None
            elif e.has_ttl:
                expires = m.timestamp + e.ttl
            version = (<tuple>record)[0] + 1
            kind = 2  # PATCH
        payload_hash = _xxh3_int(value)
        # One int, which the GC does not track.
        recent[event_id] = _window_value(offset, payload_hash)
        log_time = m.timestamp
        pending[key] = _new_record(record_type, version, canonical, checksum, expires, offset,
                                   log_time)
        _journal(entries, offset, version, PyBytes_AS_STRING(event_id), payload_hash)
        n = PyBytes_GET_SIZE(key)
        changes.append(_change_tuple(key, _change(change_header, value, n, version, kind,
                                                  canonical, checksum, expires, offset,
                                                  log_time), no_headers))
        applied += 1
    return applied



cdef Py_ssize_t _MAX_ID_BYTES = 256  # state.history.MAX_ID_BYTES (checked at import below)
from lukhas_context.state import history as _history
if _history.MAX_ID_BYTES != _MAX_ID_BYTES:
    raise ImportError("state.history.MAX_ID_BYTES changed without _fastfold.history_blocks")
cdef object _entry_key = _history.entry_key


def history_blocks(list messages, long long first, entries):
    """``state.history.rows`` without transaction records (the caller checks): the round's
    index blocks, one per context, ``[(key, value)]``, the same bytes in the same order. None
    when the records from ``first`` and the journal entries do not pair up one to one by
    offset: ``rows`` matches them by offset (and says so)."""
    cdef bytes raw = entries if type(entries) is bytes else bytes(entries)
    cdef const unsigned char* base = <const unsigned char*>PyBytes_AS_STRING(raw)
    cdef Py_ssize_t count = PyBytes_GET_SIZE(raw) // _ENTRY_SIZE
    cdef Py_ssize_t i = 0, n, size
    cdef long long offset, at
    cdef const unsigned char* entry
    cdef bytearray value
    cdef char* p
    cdef dict blocks = {}
    for m in messages:
        offset = m.offset
        if offset < first:
            continue
        if i >= count:
            return None
        entry = base + i * _ENTRY_SIZE
        at = 0
        for n in range(8):
            at |= (<long long>entry[n]) << (8 * n)
        if at != offset:
            return None
        i += 1
        key = m.key
        if type(key) is not bytes:
            continue
        n = PyBytes_GET_SIZE(key)
        if n == 0 or n > _MAX_ID_BYTES or (<const unsigned char*>PyBytes_AS_STRING(key))[0] >= 0xF5:
            continue
        block = blocks.get(key)
        if block is None:
            blocks[key] = (_entry_key(key, offset), bytearray(PyBytes_FromStringAndSize(
                <const char*>entry + 8, 9)))
            continue
        value = (<tuple>block)[1]
        size = PyByteArray_GET_SIZE(value)
        PyByteArray_Resize(value, size + 17)
        p = PyByteArray_AS_STRING(value) + size
        _put_le64(p, <unsigned long long>offset)
        memcpy(p + 8, entry + 8, 9)  # status | version, as the journal entry has them
    if i != count:
        return None
    return [(block_key, bytes(value)) for block_key, value in blocks.values()]


def window_trim(dict ids, floor):
    """``{k: v for k, v in ids.items() if v >= floor}`` (``DedupeWindow.forget_below``):
    a new dict, in the same order, in one C loop."""
    cdef dict out = {}
    cdef Py_ssize_t pos = 0
    cdef PyObject* key
    cdef PyObject* value
    while PyDict_Next(ids, &pos, &key, &value):
        if PyObject_RichCompareBool(<object>value, floor, Py_GE):
            out[<object>key] = <object>value
    return out


def barrier_end(records):
    """``round.segment_end``: how many of ``records`` fold in one round, up to and including
    the first with the empty key (a checkpoint barrier), else all of them."""
    cdef Py_ssize_t i = 0
    cdef object key
    for m in records:
        i += 1
        key = m.key
        if type(key) is bytes and PyBytes_GET_SIZE(key) == 0:
            return i
    return i
