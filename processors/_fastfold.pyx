# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""The fold's hot loop in C, for the commonest event only: an unconditional Put whose payload
is exactly ``EventCodec.simple_put``'s shape. It computes what the pure-Python path
(``processors.round.PartitionFolder._fold_one``) computes, byte for byte; the tests fold
generated logs through both and compare (tests/unit/processors/test_fold_native.py). Every other record
is handed to ``slow(message)`` in log order. ``recent`` is ``state.dedupe.DedupeWindow.ids``:
an event id already in it goes to ``slow``, which decides; a new one is inserted as
``DedupeWindow.admit`` inserts it.

Why native: after aiokafka has built its records, the bare consumer's budget is about 3 µs a
record here, and interpreted Python spends about 12 µs on this event's shape check, canonical
JSON, record, change encoding and batch append.
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


cdef Py_ssize_t _doc_start(bytes value, bytes key, bytes header):
    """``EventCodec.simple_put`` in C: where the document starts, or -1."""
    cdef Py_ssize_t n = PyBytes_GET_SIZE(key)
    cdef Py_ssize_t size = PyBytes_GET_SIZE(value)
    cdef const unsigned char* v = <const unsigned char*>PyBytes_AS_STRING(value)
    cdef const unsigned char* k = <const unsigned char*>PyBytes_AS_STRING(key)
    cdef Py_ssize_t i, p
    cdef unsigned long long z = 0
    cdef int shift = 0
    cdef unsigned char byte
    if n <= 0 or n >= 64 or size < 28 + n + 1 + 4:
        return -1
    if v[26] != (n << 1) or v[27 + n] != 0:
        return -1
    if v[size - 4] != 0 or v[size - 3] != 0 or v[size - 2] != 0 or v[size - 1] != 0:
        return -1
    if memcmp(v, PyBytes_AS_STRING(header), 10) != 0 or memcmp(v + 27, k, n) != 0:
        return -1
    for i in range(n):
        if k[i] >= 0x80:
            return -1
    p = 28 + n
    while True:
        if p >= size - 4 or shift > 63:
            return -1
        byte = v[p]
        p += 1
        if shift == 63 and byte > 1:
            return -1  # overflows 64 bits: the general path dead-letters it
        z |= (<unsigned long long>(byte & 0x7F)) << shift
        if byte < 0x80:
            break
        shift += 7
    if z & 1:
        return -1  # a negative length
    if p + <Py_ssize_t>(z >> 1) != size - 4:
        return -1
    return p


cdef bytes _change(bytes header, bytes value, Py_ssize_t n, long long version, bytes canonical,
                   bytes checksum, long long offset, long long log_time):
    """``ChangeCodec.encode_fields`` of a PUT without expiry, into one buffer."""
    cdef unsigned long long zv = _zigzag(version)
    cdef unsigned long long zo = _zigzag(offset)
    cdef unsigned long long zt = _zigzag(log_time)
    cdef Py_ssize_t doc_size = PyBytes_GET_SIZE(canonical)
    cdef unsigned long long zd = _zigzag(doc_size)
    cdef Py_ssize_t total = (10 + 1 + n + _varint_size(zv) + 1 + _varint_size(zd) + doc_size
                             + 8 + 1 + _varint_size(zo) + 16 + _varint_size(zt))
    cdef bytes out = PyBytes_FromStringAndSize(NULL, total)
    cdef char* p = PyBytes_AS_STRING(out)
    cdef const char* v = PyBytes_AS_STRING(value)
    memcpy(p, PyBytes_AS_STRING(header), 10)
    p += 10
    memcpy(p, v + 26, 1 + n)  # the id's length byte and the id
    p += 1 + n
    p = _put_varint(p, zv)
    p[0] = 0  # kind PUT
    p += 1
    p = _put_varint(p, zd)
    memcpy(p, PyBytes_AS_STRING(canonical), doc_size)
    p += doc_size
    memcpy(p, PyBytes_AS_STRING(checksum), 8)
    p += 8
    p[0] = 0  # expires_at_ms null
    p += 1
    p = _put_varint(p, zo)
    memcpy(p, v + 10, 16)  # event_id
    p += 16
    _put_varint(p, zt)
    return out


def fold_puts(list messages, long long first, bytes event_header, bytes change_header,
              dict pending, object get, object record_type, Py_ssize_t max_doc_bytes,
              Py_ssize_t max_depth, dict recent, bytearray entries, list changes,
              object no_headers, object slow):
    """Folds ``messages`` (offsets below ``first`` skipped): simple Puts of event ids not seen
    in the dedupe window here, every other record through ``slow(message)``. Returns how many
    events this loop applied."""
    cdef Py_ssize_t applied = 0
    cdef Py_ssize_t start, size, n
    cdef long long offset, version
    cdef const unsigned char* v
    for m in messages:
        offset = m.offset
        if offset < first:
            continue
        key = m.key
        value = m.value
        if type(key) is not bytes or type(value) is not bytes:
            slow(m)
            continue
        start = _doc_start(<bytes>value, <bytes>key, event_header)
        size = PyBytes_GET_SIZE(value)
        if start < 0 or size - 4 - start > max_doc_bytes:
            slow(m)
            continue
        v = <const unsigned char*>PyBytes_AS_STRING(value)
        if _needs_checks(v + start, size - 4 - start, max_depth):
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
        payload_hash = _xxh3_int(value)
        # One int, which the GC does not track; the shift must be on a Python int, not in C.
        recent[event_id] = ((<object>offset) << 64) | payload_hash
        record = pending.get(key)
        if record is None:
            record = get(key)
        version = 1 if record is None else record[0] + 1
        checksum = _xxh3(canonical)
        log_time = m.timestamp
        # tuple.__new__ straight away: a NamedTuple's own __new__ is a Python frame per event.
        pending[key] = _tuple_new(record_type, (version, canonical, checksum, None, offset,
                                                log_time))
        _journal(entries, offset, version, PyBytes_AS_STRING(event_id), payload_hash)
        n = PyBytes_GET_SIZE(key)
        changes.append((key, _change(change_header, value, n, version, canonical, checksum,
                                     offset, log_time), no_headers))
        applied += 1
    return applied
