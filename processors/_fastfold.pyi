from collections.abc import Callable, Sequence
from typing import Any

def fold_simple(
    messages: list[Any],
    first: int,
    event_header: bytes,
    change_header: bytes,
    pending: dict[bytes, Any],
    get: Callable[[bytes], Any],
    record_type: type,
    max_doc_bytes: int,
    max_depth: int,
    max_operations: int,
    max_work: int,
    recent: dict[bytes, int],
    entries: bytearray,
    changes: list[Any],
    no_headers: object,
    slow: Callable[[Any], None],
) -> int: ...
def history_blocks(
    messages: list[Any], first: int, entries: bytes | bytearray
) -> list[tuple[bytes, bytes]] | None: ...
def is_canonical_object(doc: bytes, max_depth: int = 64) -> bool: ...
def window_trim(ids: dict[bytes, int], floor: int) -> dict[bytes, int]: ...
def barrier_end(records: Sequence[Any]) -> int: ...
