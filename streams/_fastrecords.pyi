from collections.abc import Callable, Sequence
from typing import Any

class WalRecord:
    topic: str
    partition: int
    offset: int
    timestamp: int
    timestamp_type: int
    key: bytes | None
    value: bytes | None
    checksum: int | None
    serialized_key_size: int
    serialized_value_size: int
    headers: Sequence[tuple[str, bytes]]
    def __init__(
        self,
        topic: str,
        partition: int,
        offset: int,
        timestamp: int,
        timestamp_type: int,
        key: bytes | None,
        value: bytes | None,
        checksum: int | None,
        serialized_key_size: int,
        serialized_value_size: int,
        headers: Sequence[tuple[str, bytes]],
    ) -> None: ...

def consumer_record(self: Any, tp: Any, record: Any) -> WalRecord: ...
def set_fallback(fallback: Any) -> None: ...

class ChangeBatch:
    end: int
    def __init__(
        self,
        records: list[tuple[bytes | None, bytes | None, Sequence[tuple[str, bytes | None]]]],
        start: int,
        seq_name: str | None,
        first_seq: int,
        batch_size: int,
        transactional: bool,
        timestamp_ms: int,
        codec: int = 0,
        compress: Callable[[memoryview], bytes] | None = None,
    ) -> None: ...
    def append(self, *, timestamp: Any, key: Any, value: Any, headers: Any = ...) -> None: ...
    def close(self) -> None: ...
    def closed(self) -> bool: ...
    def record_count(self) -> int: ...
    def size(self) -> int: ...
    def _set_producer_state(
        self, producer_id: int, producer_epoch: int, base_sequence: int
    ) -> None: ...
    def _build(self) -> bytearray: ...

class Unpacker:
    def __init__(self, owner: Any) -> None: ...
    def __iter__(self) -> Unpacker: ...
    def __next__(self) -> WalRecord: ...

def unpacker(owner: Any) -> Any: ...
def set_unpack_fallback(fallback: Any) -> None: ...
def drain(owner: Any, max_records: int | None) -> tuple[list[Any], bool]: ...
