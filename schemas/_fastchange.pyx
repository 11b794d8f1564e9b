# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""The change stream's decoder in C: ``read_change`` reads the fields of a ``ContextChange``
from its single-object Avro bytes, or says it cannot (then the Python codec decides and
explains). Used by ``streams.watch`` when the extension is built; property-tested against
``ChangeCodec`` in ``tests/unit/streams/test_watch.py``.
"""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from libc.string cimport memcmp


cdef inline Py_ssize_t _varint(const unsigned char* v, Py_ssize_t size, Py_ssize_t p,
                               long long* out):
    """Reads one zig-zag varint long at ``p``; the new position, or -1 when it is malformed
    (truncated, longer than 10 bytes, or overflowing 64 bits)."""
    cdef unsigned long long z = 0
    cdef int shift = 0
    cdef unsigned char byte
    while True:
        if p >= size or shift > 63:
            return -1
        byte = v[p]
        p += 1
        if shift == 63 and (byte & 0x7E):
            return -1
        z |= (<unsigned long long>(byte & 0x7F)) << shift
        if byte < 0x80:
            break
        shift += 7
    out[0] = <long long>(z >> 1) ^ -<long long>(z & 1)
    return p


def read_change(bytes header, bytes value):
    """The fields of a ``ContextChange`` in ``value`` —
    ``(context_id, version, kind index, doc, checksum, expires_at_ms or None, wal_offset,
    event_id, log_time_ms)`` — or None when ``value`` is not a well-formed change of the
    schema ``header`` names (the caller then asks the Python codec, which says why)."""
    cdef Py_ssize_t size = PyBytes_GET_SIZE(value)
    cdef Py_ssize_t hsize = PyBytes_GET_SIZE(header)
    cdef const unsigned char* v = <const unsigned char*>PyBytes_AS_STRING(value)
    cdef Py_ssize_t p = hsize
    cdef long long n, version, kind, branch, expires = 0, wal_offset, log_time
    cdef bytes doc, checksum, event_id
    if size < hsize or memcmp(v, PyBytes_AS_STRING(header), hsize) != 0:
        return None
    p = _varint(v, size, p, &n)
    if p < 0 or n < 0 or n > size - p:  # not p + n > size: that overflows for n near 2**63
        return None
    try:
        context_id = PyBytes_FromStringAndSize(<const char*>v + p, n).decode("utf-8")
    except UnicodeDecodeError:
        return None
    p += n
    p = _varint(v, size, p, &version)
    if p < 0:
        return None
    p = _varint(v, size, p, &kind)
    if p < 0 or kind < 0 or kind > 4:
        return None
    p = _varint(v, size, p, &n)
    if p < 0 or n < 0 or n > size - p:
        return None
    doc = PyBytes_FromStringAndSize(<const char*>v + p, n)
    p += n
    if 8 > size - p:
        return None
    checksum = PyBytes_FromStringAndSize(<const char*>v + p, 8)
    p += 8
    p = _varint(v, size, p, &branch)
    if p < 0 or branch < 0 or branch > 1:
        return None
    if branch == 1:
        p = _varint(v, size, p, &expires)
        if p < 0:
            return None
    p = _varint(v, size, p, &wal_offset)
    if p < 0 or 16 > size - p:
        return None
    event_id = PyBytes_FromStringAndSize(<const char*>v + p, 16)
    p += 16
    p = _varint(v, size, p, &log_time)
    if p != size:
        return None
    return (context_id, version, kind, doc, checksum, expires if branch == 1 else None,
            wal_offset, event_id, log_time)
