"""The one parser of a WAL position, ``PARTITION:OFFSET`` (the client and the read API)."""

from __future__ import annotations

import re

import pytest

from lukhas_context.streams.exceptions import InvalidPositionError, ValidationError
from lukhas_context.streams.position import MAX_OFFSET, MAX_PARTITION, parse_position


def test_a_position_parses_to_its_numbers() -> None:
    assert parse_position("0:0") == (0, 0)
    assert parse_position(f"{MAX_PARTITION}:{MAX_OFFSET}") == (MAX_PARTITION, MAX_OFFSET)
    assert parse_position("007:010") == (7, 10)
    # Leading zeros past int()'s 4,300-digit limit: the number they write, not a ValueError.
    assert parse_position("0:" + "0" * 5000 + "1") == (0, 1)
    assert parse_position("0" * 5000 + ":0") == (0, 0)


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("5", "min_offset must be PARTITION:OFFSET"),
        ("a:1", "partition must be a non-negative integer"),
        ("1:", "offset must be a non-negative integer"),
        ("1:٣", "offset must be a non-negative integer"),  # int() would take it
        ("1: 3", "offset must be a non-negative integer"),
        ("1:-3", "offset must be a non-negative integer"),
        (f"{MAX_PARTITION + 1}:0", "partition 2147483648 is out of range"),
        (f"0:{MAX_OFFSET + 1}", "out of range: at most 9223372036854775807"),
        ("0:" + "9" * 1_000_000, "(1000000 characters) is out of range"),  # not converted
        ("0:" + "0" * 5000 + "1" * 20, "(5020 characters) is out of range"),
    ],
)
def test_anything_else_is_refused_with_a_reason(text: str, says: str) -> None:
    with pytest.raises(InvalidPositionError, match=re.escape(says)) as info:
        parse_position(text, "min_offset")
    assert isinstance(info.value, ValidationError) and isinstance(info.value, ValueError)
