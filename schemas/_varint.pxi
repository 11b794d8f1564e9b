# Zigzag varints, as Avro (schemas) and Kafka's record format v2 (streams) both write them.
# Included by processors/_fastfold.pyx and streams/_fastrecords.pyx.


cdef inline unsigned long long _zigzag(long long n) noexcept:
    return (<unsigned long long>n << 1) ^ <unsigned long long>(n >> 63)


cdef inline Py_ssize_t _varint_size(unsigned long long z) noexcept:
    cdef Py_ssize_t size = 1
    while z >= 0x80:
        z >>= 7
        size += 1
    return size


cdef inline char* _put_varint(char* out, unsigned long long z) noexcept:
    while z >= 0x80:
        out[0] = <char>((z & 0x7F) | 0x80)
        out += 1
        z >>= 7
    out[0] = <char>z
    return out + 1
