# cython: language_level=3, boundscheck=False, wraparound=False
"""The records a consumer's fetch yields, built in C (see ``streams.fastfetch``).

aiokafka turns each record of a fetched batch into a ``ConsumerRecord`` dataclass in a Python
frame (``PartitionRecords._consumer_record``), about 1 µs a record here: as much as the fold
spends on a put. ``WalRecord`` has the same fields, read-only, and ``consumer_record`` builds
one from aiokafka's C record without a Python frame. A test fetches the same records both ways
and compares every field.
"""

cimport cython
from cpython.bytearray cimport PyByteArray_AS_STRING, PyByteArray_GET_SIZE, PyByteArray_Resize
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_GET_SIZE
from cpython.list cimport PyList_GET_ITEM, PyList_GET_SIZE
from cpython.tuple cimport PyTuple_GET_ITEM, PyTuple_GET_SIZE
from libc.stdint cimport int16_t, int32_t, int64_t, uint16_t, uint32_t, uint64_t
from libc.string cimport memcpy

cdef extern from "Python.h":
    const char* PyUnicode_AsUTF8AndSize(object s, Py_ssize_t* size) except NULL


# no_gc: a record refers to ints, str, bytes and a tuple of (str, bytes) headers, never to
# anything that could refer back, so no cycle passes through one and the collector need not
# track the hundreds of thousands a second a fetch makes.
@cython.no_gc
cdef class WalRecord:
    """A fetched record: the fields of aiokafka's ``ConsumerRecord``, read-only."""

    cdef readonly object topic
    cdef readonly object partition
    cdef readonly object offset
    cdef readonly object timestamp
    cdef readonly object timestamp_type
    cdef readonly object key
    cdef readonly object value
    cdef readonly object checksum
    cdef readonly object serialized_key_size
    cdef readonly object serialized_value_size
    cdef readonly object headers

    def __init__(self, topic, partition, offset, timestamp, timestamp_type, key, value,
                 checksum, serialized_key_size, serialized_value_size, headers):
        self.topic = topic
        self.partition = partition
        self.offset = offset
        self.timestamp = timestamp
        self.timestamp_type = timestamp_type
        self.key = key
        self.value = value
        self.checksum = checksum
        self.serialized_key_size = serialized_key_size
        self.serialized_value_size = serialized_value_size
        self.headers = headers

    def _fields(self):
        return (self.topic, self.partition, self.offset, self.timestamp, self.timestamp_type,
                self.key, self.value, self.checksum, self.serialized_key_size,
                self.serialized_value_size, self.headers)

    def __eq__(self, other):
        if not isinstance(other, WalRecord):
            return NotImplemented
        return self._fields() == (<WalRecord>other)._fields()

    __hash__ = None

    def __repr__(self):
        return (f"WalRecord(topic={self.topic!r}, partition={self.partition!r}, "
                f"offset={self.offset!r}, timestamp={self.timestamp!r}, "
                f"timestamp_type={self.timestamp_type!r}, key={self.key!r}, "
                f"value={self.value!r}, checksum={self.checksum!r}, "
                f"serialized_key_size={self.serialized_key_size!r}, "
                f"serialized_value_size={self.serialized_value_size!r}, "
                f"headers={self.headers!r})")


cdef object _fallback = None


def set_fallback(fallback):
    """aiokafka's own ``_consumer_record``, for a consumer with deserializers."""
    global _fallback
    _fallback = fallback


def consumer_record(self, tp, record):
    """``PartitionRecords._consumer_record``: for a consumer without deserializers the same
    fields in a ``WalRecord``, else aiokafka's own (``set_fallback``)."""
    if self._key_deserializer is not None or self._value_deserializer is not None:
        return _fallback(self, tp, record)
    return _wal_record(tp.topic, tp.partition, record.offset, record)


cdef inline WalRecord _wal_record(topic, partition, offset, record):
    """The ``WalRecord`` of aiokafka's C record ``record`` (its ``offset`` read already)."""
    cdef WalRecord r = WalRecord.__new__(WalRecord)
    key = record.key
    value = record.value
    r.topic = topic
    r.partition = partition
    r.offset = offset
    r.timestamp = record.timestamp
    r.timestamp_type = record.timestamp_type
    r.key = key
    r.value = value
    r.checksum = record.checksum
    r.serialized_key_size = -1 if key is None else len(key)
    r.serialized_value_size = -1 if value is None else len(value)
    r.headers = tuple(record.headers)
    return r


# ---- change batches ----------------------------------------------------------------------
#
# Kafka's record batch, format v2 (magic 2), as aiokafka's ``DefaultRecordBatchBuilder``
# writes it: a 61-byte header (big-endian), then the records, each a zigzag-varint length,
# attributes (0), timestamp delta, offset delta, key, value and headers, lengths as zigzag
# varints (-1: null). The CRC-32C covers everything from the attributes (byte 21) on.

cdef enum:
    _HEADER = 61
    _CRC_AT = 17
    _ATTRIBUTES_AT = 21
    _TRANSACTIONAL = 0x10

cdef object _crc32c = None


include "../schemas/_varint.pxi"


cdef inline Py_ssize_t _zsize(int64_t v) noexcept:
    """The bytes of ``v`` as a zigzag varint."""
    return _varint_size(_zigzag(v))


cdef inline char* _put_z(char* p, int64_t v) noexcept:
    """Writes ``v`` as a zigzag varint at ``p``; returns the byte after it."""
    return _put_varint(p, _zigzag(v))


cdef inline char* _put_be(char* p, uint64_t v, int width) noexcept:
    cdef int i
    for i in range(width - 1, -1, -1):
        p[i] = <char>(v & 0xFF)
        v >>= 8
    return p + width


cdef inline Py_ssize_t _bytes_len(object b) except -2:
    """The length of ``b`` (bytes), -1 for None; TypeError for anything else."""
    if b is None:
        return -1
    if type(b) is not bytes:
        raise TypeError(f"record keys, values and header values must be bytes, not {type(b).__name__}")
    return PyBytes_GET_SIZE(b)


cdef inline char* _put_bytes(char* p, object b, Py_ssize_t n) noexcept:
    p = _put_z(p, n)
    if n > 0:
        memcpy(p, PyBytes_AS_STRING(b), n)
        p += n
    return p


cdef inline Py_ssize_t _format_int(char* out, int64_t v) noexcept:
    """``b"%d" % v`` into ``out`` (24 bytes); returns its length."""
    cdef char tmp[24]
    cdef Py_ssize_t n = 0, k = 0
    cdef uint64_t u
    if v < 0:
        out[0] = b'-'
        k = 1
        u = <uint64_t>(-(v + 1)) + 1
    else:
        u = <uint64_t>v
    while True:
        tmp[n] = <char>(48 + u % 10)
        n += 1
        u //= 10
        if u == 0:
            break
    while n > 0:
        n -= 1
        out[k] = tmp[n]
        k += 1
    return k


@cython.final
cdef class ChangeBatch:
    """A whole record batch of ``records[start:]`` (key, value, headers), built in one call:
    what aiokafka's ``BatchBuilder`` filled by one ``append`` a record would hold, for
    ``producer.send_batch``. It has the methods the producer's accumulator calls on a
    ``BatchBuilder``; it is closed from the start (``append`` returns None).

    ``seq``: record ``i`` gets one more header, ``(seq_name, b"%d" % (first_seq + i))``.
    Records go in while the batch stays under ``batch_size`` bytes (as aiokafka decides it;
    the first always goes in);
    ``end`` is the index of the first record left out (``len(records)`` when all fit). Every
    record has the timestamp ``timestamp_ms`` (create time).

    ``codec`` (Kafka's attribute bits: 1 gzip, 2 snappy, 3 lz4, 4 zstd) and ``compress``:
    the records are compressed, as one, when the batch is built (``batch_size`` bounds them
    before compression, as aiokafka's builder does)."""

    cdef bytearray _buffer
    cdef Py_ssize_t _size
    cdef int32_t _count
    cdef int64_t _timestamp
    cdef bint _transactional
    cdef int64_t _producer_id
    cdef int16_t _producer_epoch
    cdef int32_t _base_sequence
    cdef bint _built
    cdef int _codec
    cdef object _compress
    cdef readonly Py_ssize_t end

    def __cinit__(self, list records, Py_ssize_t start, seq_name, int64_t first_seq,
                  Py_ssize_t batch_size, bint transactional, int64_t timestamp_ms,
                  int codec=0, compress=None):
        cdef Py_ssize_t n = PyList_GET_SIZE(records)
        cdef Py_ssize_t i, h, nh, body, klen, vlen, hk, hv, total, need, pos
        cdef Py_ssize_t seq_len = 0, seq_value_len
        cdef const char* seq_utf8 = NULL
        cdef const char* hname
        cdef char digits[24]
        cdef object record, key, value, headers, header, hvalue
        cdef char* p
        cdef int64_t delta
        if start < 0 or start > n:
            raise ValueError(f"start {start} outside 0..{n}")
        self._producer_id = -1
        self._producer_epoch = -1
        self._base_sequence = 0
        self._timestamp = timestamp_ms
        self._transactional = transactional
        if codec < 0 or codec > 4 or (codec != 0) != (compress is not None):
            raise ValueError("a codec (1-4) goes with its compress function, 0 with None")
        self._codec = codec
        self._compress = compress
        if seq_name is not None:
            seq_utf8 = PyUnicode_AsUTF8AndSize(seq_name, &seq_len)
        self._buffer = bytearray(min(max(batch_size, _HEADER + 64), _HEADER + 4096))
        pos = _HEADER
        i = start
        while i < n:
            record = <object>PyList_GET_ITEM(records, i)
            if type(record) is not tuple or PyTuple_GET_SIZE(record) != 3:
                raise TypeError("a record is a (key, value, headers) tuple")
            key = <object>PyTuple_GET_ITEM(record, 0)
            value = <object>PyTuple_GET_ITEM(record, 1)
            headers = <object>PyTuple_GET_ITEM(record, 2)
            klen = _bytes_len(key)
            vlen = _bytes_len(value)
            delta = i - start
            if type(headers) is not list and type(headers) is not tuple:
                raise TypeError("a record's headers are a list of (str, bytes) tuples")
            nh = len(headers)
            body = (1 + _zsize(0) + _zsize(delta)
                    + _zsize(klen) + (klen if klen > 0 else 0)
                    + _zsize(vlen) + (vlen if vlen > 0 else 0))
            for h in range(nh):
                header = headers[h]
                if type(header) is not tuple or PyTuple_GET_SIZE(header) != 2:
                    raise TypeError("a header is a (str, bytes) tuple")
                PyUnicode_AsUTF8AndSize(<object>PyTuple_GET_ITEM(header, 0), &hk)
                hv = _bytes_len(<object>PyTuple_GET_ITEM(header, 1))
                body += _zsize(hk) + hk + _zsize(hv) + (hv if hv > 0 else 0)
            seq_value_len = 0
            if seq_utf8 != NULL:
                seq_value_len = _format_int(digits, first_seq + i)
                body += _zsize(seq_len) + seq_len + _zsize(seq_value_len) + seq_value_len
                nh += 1
            body += _zsize(nh)
            total = _zsize(body) + body
            if pos + total >= batch_size and i > start:  # aiokafka's bound: >=, not >
                break
            need = pos + total
            if need > PyByteArray_GET_SIZE(self._buffer):
                PyByteArray_Resize(self._buffer, max(need, 2 * PyByteArray_GET_SIZE(self._buffer)))
            p = PyByteArray_AS_STRING(self._buffer) + pos
            p = _put_z(p, body)
            p[0] = 0  # attributes
            p += 1
            p = _put_z(p, 0)  # timestamp delta: one timestamp for the batch
            p = _put_z(p, delta)
            p = _put_bytes(p, key, klen)
            p = _put_bytes(p, value, vlen)
            p = _put_z(p, nh)
            for h in range(len(headers)):
                header = headers[h]
                hname = PyUnicode_AsUTF8AndSize(<object>PyTuple_GET_ITEM(header, 0), &hk)
                p = _put_z(p, hk)
                memcpy(p, hname, hk)
                p += hk
                hvalue = <object>PyTuple_GET_ITEM(header, 1)
                p = _put_bytes(p, hvalue, _bytes_len(hvalue))
            if seq_utf8 != NULL:
                p = _put_z(p, seq_len)
                memcpy(p, seq_utf8, seq_len)
                p += seq_len
                p = _put_z(p, seq_value_len)
                memcpy(p, digits, seq_value_len)
                p += seq_value_len
            pos = need
            i += 1
        self._size = pos
        self._count = <int32_t>(i - start)
        self.end = i
        PyByteArray_Resize(self._buffer, pos)

    # The methods aiokafka's accumulator and sender call on a BatchBuilder.

    def append(self, *, timestamp, key, value, headers=()):
        return None  # closed: a record sent with producer.send goes in a batch of its own

    def close(self):
        pass

    def closed(self):
        return True

    def record_count(self):
        return self._count

    def size(self):
        return self._size

    def _set_producer_state(self, int64_t producer_id, int16_t producer_epoch,
                            int32_t base_sequence):
        self._producer_id = producer_id
        self._producer_epoch = producer_epoch
        self._base_sequence = base_sequence
        self._built = False

    def _build(self):
        global _crc32c
        cdef char* p
        if self._built:
            return self._buffer
        if _crc32c is None:
            from aiokafka.record.util import calc_crc32c
            _crc32c = calc_crc32c
        if self._compress is not None:  # once: a rebuild (new producer state) keeps it
            compressed = self._compress(memoryview(self._buffer)[_HEADER:])
            self._buffer = bytearray(_HEADER) + compressed
            self._size = PyByteArray_GET_SIZE(self._buffer)
            self._compress = None
        p = PyByteArray_AS_STRING(self._buffer)
        p = _put_be(p, 0, 8)  # base offset
        p = _put_be(p, <uint64_t>(self._size - 12), 4)  # batch length
        p = _put_be(p, 0xFFFFFFFF, 4)  # partition leader epoch: -1, as aiokafka writes it
        p[0] = 2  # magic
        p += 1
        p = _put_be(p, 0, 4)  # the CRC, below
        p = _put_be(p, (_TRANSACTIONAL if self._transactional else 0) | self._codec, 2)
        p = _put_be(p, <uint64_t>(self._count - 1), 4)  # last offset delta
        p = _put_be(p, <uint64_t>self._timestamp, 8)  # first timestamp
        p = _put_be(p, <uint64_t>self._timestamp, 8)  # max timestamp
        p = _put_be(p, <uint64_t>self._producer_id, 8)
        p = _put_be(p, <uint64_t><uint16_t>self._producer_epoch, 2)
        p = _put_be(p, <uint64_t><uint32_t>self._base_sequence, 4)
        _put_be(p, <uint64_t>self._count, 4)
        crc = _crc32c(memoryview(self._buffer)[_ATTRIBUTES_AT:])
        _put_be(PyByteArray_AS_STRING(self._buffer) + _CRC_AT, <uint32_t>crc, 4)
        self._built = True
        return self._buffer



# ---- fetched records, a batch at a time ------------------------------------------------
#
# aiokafka hands a fetch's records out one by one through three Python frames: ``getall``'s
# loop, ``PartitionRecords.__next__`` and the ``_unpack_records`` generator. ``Unpacker``
# is that generator in C, for a consumer without deserializers, and ``drain`` is getall's
# loop: the batch-level decisions (CRC, control batches, aborted transactions under
# read_committed) are the generator's, made the same way with the same methods of the
# ``PartitionRecords``; each record becomes a ``WalRecord`` as ``consumer_record`` builds it.

cdef int _READ_COMMITTED = 1
cdef object _CorruptRecord = None


@cython.final
cdef class Unpacker:
    """``PartitionRecords._unpack_records()`` for ``records`` (a ``PartitionRecords``)."""

    cdef object owner
    cdef object tp
    cdef object topic
    cdef object partition
    cdef object source
    cdef object batch_iter
    cdef object batch
    cdef bint check_crcs
    cdef bint read_committed
    cdef bint done

    def __cinit__(self, owner):
        global _CorruptRecord
        if _CorruptRecord is None:
            from aiokafka.errors import CorruptRecordException
            _CorruptRecord = CorruptRecordException
        self.owner = owner
        self.tp = owner._tp
        self.topic = self.tp.topic
        self.partition = self.tp.partition
        self.source = owner._records
        self.check_crcs = bool(owner._check_crcs)
        self.read_committed = owner._isolation_level == _READ_COMMITTED

    def __iter__(self):
        return self

    def __next__(self):
        record = self._next()
        if record is None:
            raise StopIteration
        return record

    cdef object _next(self):
        """The next record, or None when the fetch is done. After an error (a bad CRC), like
        a generator that raised, it is done: the rest is fetched again."""
        if self.done:
            return None
        try:
            return self._advance()
        except BaseException:
            self.done = True
            raise

    cdef object _advance(self):
        cdef object record, offset, owner = self.owner
        cdef WalRecord r
        while True:
            if self.batch_iter is not None:
                record = next(self.batch_iter, None)
                if record is None:
                    # As aiokafka: past the batch's last offset, even if compaction removed
                    # its last records.
                    owner.next_fetch_offset = self.batch.next_offset
                    self.batch_iter = None
                    self.batch = None
                    continue
                offset = record.offset
                if offset < owner.next_fetch_offset:
                    continue  # a compressed message set's earlier records
                r = _wal_record(self.topic, self.partition, offset, record)
                owner.next_fetch_offset = offset + 1
                return r
            if not self.source.has_next():
                self.done = True
                return None
            batch = self.source.next_batch()
            if self.check_crcs and not batch.validate_crc():
                raise _CorruptRecord(f"Invalid CRC - {self.tp}")
            if self.read_committed and batch.producer_id is not None:
                owner._consume_aborted_up_to(batch.base_offset)
                if batch.is_control_batch and owner._contains_abort_marker(batch):
                    owner._aborted_producers.discard(batch.producer_id)
                if batch.is_transactional and batch.producer_id in owner._aborted_producers:
                    owner.next_fetch_offset = batch.next_offset
                    continue
            if batch.is_control_batch:
                owner.next_fetch_offset = batch.next_offset
                continue
            self.batch = batch
            self.batch_iter = iter(batch)


def unpacker(owner):
    """What ``PartitionRecords._unpack_records`` returns: an ``Unpacker`` for a consumer
    without deserializers, else aiokafka's own generator (``set_fallback``'s second)."""
    if owner._key_deserializer is not None or owner._value_deserializer is not None:
        return _fallback_unpack(owner)
    return Unpacker(owner)


cdef object _fallback_unpack = None


def set_unpack_fallback(fallback):
    """aiokafka's own ``_unpack_records``, for a consumer with deserializers."""
    global _fallback_unpack
    _fallback_unpack = fallback


def drain(owner, max_records):
    """``getall``'s loop over a ``PartitionRecords``: up to ``max_records`` (None: all) of
    its records, and whether it is exhausted. Records come from its iterator, an
    ``Unpacker`` taken without a Python frame a record."""
    cdef list out = []
    cdef Py_ssize_t limit = -1 if max_records is None else max_records
    cdef object it = owner._records_iterator
    cdef object record
    if type(it) is Unpacker:
        while limit < 0 or len(out) < limit:
            record = (<Unpacker>it)._next()
            if record is None:
                owner._records_iterator = None
                return out, True
            out.append(record)
        return out, False
    for record in owner:
        out.append(record)
        if limit >= 0 and len(out) >= limit:
            return out, False
    return out, True
