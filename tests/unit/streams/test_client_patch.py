"""A patch the fold would reject whatever the document is refused by the client, with a typed
error, and nothing is sent (issue 9: ``lukhas patch a:1 '[{"op":"frob"}]'`` was appended)."""

from __future__ import annotations

from typing import Any

import pytest

from lukhas_context.streams.client import ClientConfig, ContextClient
from lukhas_context.streams.exceptions import InvalidPatchError, ValidationError

BAD_PATCHES: list[tuple[Any, str]] = [
    ([{"op": "frob", "path": "/x"}], "unknown op 'frob'"),
    ([{"op": "add", "path": "x", "value": 1}], "is not a JSON pointer"),
    ([{"op": "add", "path": "/x"}], 'the member "value" is missing'),
    ([{"op": "move", "from": "/a", "path": "/a/b"}], "into its own child"),
    ([{"op": "test", "path": "", "value": 1}] * 1001, "over the limit of 1000"),
    ([{"op": "remove", "path": "/a" * 65}], "deeper than 64 levels"),
]


@pytest.mark.parametrize(("patch", "reason"), BAD_PATCHES)
async def test_invalid_json_patches_are_refused_before_sending(patch: Any, reason: str) -> None:
    # Nothing listens on port 1: any attempt to send would fail differently.
    client = ContextClient(ClientConfig("127.0.0.1:1", "http://127.0.0.1:1"))
    with pytest.raises(InvalidPatchError, match=reason) as info:
        await client.patch("a:1", patch)
    assert isinstance(info.value, ValidationError)
    assert not client.writer.producer_started
    await client.close()


async def test_merge_patches_nested_past_a_document_are_refused() -> None:
    deep: Any = 1
    for _ in range(65):
        deep = {"k": deep}
    client = ContextClient(ClientConfig("127.0.0.1:1", "http://127.0.0.1:1"))
    with pytest.raises(InvalidPatchError, match="deeper than 64 levels"):
        await client.patch("a:1", deep, merge=True)
    with pytest.raises(ValidationError, match="64-bit"):
        await client.patch("a:1", [{"op": "add", "path": "/n", "value": 2**64}])
    assert not client.writer.producer_started
    await client.close()
