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
cdef object _tuple_new = tuple.__new__
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


cdef inline unsigned long long _zigzag(long long n):
    return (<unsigned long long>n << 1) ^ <unsigned long long>(n >> 63)


cdef inline Py_ssize_t _varint_size(unsigned long long z):
    cdef Py_ssize_t size = 1
    while z >= 0x80:
        z >>= 7
        size += 1
    return size


cdef inline char* _put_varint(char* out, unsigned long long z):
    while z >= 0x80:
        out[0] = <char>((z & 0x7F) | 0x80)
        out += 1
        z >>= 7
    out[0] = <char>z
    return out + 1


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
    cdef const unsigned char* v
    cdef char kind
    cdef _PatchEvent e
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
            version = 1 if record is None else record[0] + 1
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
            if record is None or record[1] is None:
                slow(m)
                continue
            expires = record[3]
            if expires is not None and not m.timestamp < expires:
                slow(m)
                continue
            if e.has_expected and e.expected != record[0]:
                slow(m)
                continue
            canonical = _patch_document(record[1], value[e.start:e.start + e.size],
                                         max_depth, max_doc_bytes, max_operations, max_work)
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
            version = record[0] + 1
            kind = 2  # PATCH
        payload_hash = _xxh3_int(value)
        # One int, which the GC does not track; the shift must be on a Python int, not in C.
        recent[event_id] = ((<object>offset) << 64) | payload_hash
        log_time = m.timestamp
        # tuple.__new__ straight away: a NamedTuple's own __new__ is a Python frame per event.
        pending[key] = _tuple_new(record_type, (version, canonical, checksum, expires, offset,
                                                log_time))
        _journal(entries, offset, version, PyBytes_AS_STRING(event_id), payload_hash)
        n = PyBytes_GET_SIZE(key)
        changes.append((key, _change(change_header, value, n, version, kind, canonical,
                                     checksum, expires, offset, log_time), no_headers))
        applied += 1
    return applied

