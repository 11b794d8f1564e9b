from typing import Any

def patch_document(
    doc: bytes,
    patch: bytes,
    max_depth: int,
    max_document_bytes: int,
    max_operations: int,
    max_work: int,
    hint: list[Any] | None = None,
) -> bytes | None: ...
def diff_documents(
    old: bytes, new: bytes, max_operations: int = 64
) -> list[dict[str, Any]] | None: ...
