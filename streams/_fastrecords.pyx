# cython: language_level=3, boundscheck=False, wraparound=False
"""The records a consumer's fetch yields, built in C (see ``streams.fastfetch``).

aiokafka turns each record of a fetched batch into a ``ConsumerRecord`` dataclass in a Python
frame (``PartitionRecords._consumer_record``), about 1 µs a record here: as much as the fold
spends on a put. ``WalRecord`` has the same fields, read-only, and ``consumer_record`` builds
one from aiokafka's C record without a Python frame. A test fetches the same records both ways
and compares every field.
"""

cimport cython


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
    cdef WalRecord r = WalRecord.__new__(WalRecord)
    key = record.key
    value = record.value
    r.topic = tp.topic
    r.partition = tp.partition
    r.offset = record.offset
    r.timestamp = record.timestamp
    r.timestamp_type = record.timestamp_type
    r.key = key
    r.value = value
    r.checksum = record.checksum
    r.serialized_key_size = -1 if key is None else len(key)
    r.serialized_value_size = -1 if value is None else len(value)
    r.headers = tuple(record.headers)
    return r
