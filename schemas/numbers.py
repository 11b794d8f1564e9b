"""JSON numbers the store can hold exactly, and the ones it refuses.

Documents are parsed by orjson, which reads an integer outside the 64-bit range (below
-2**63 or above 2**64 - 1) as the nearest double: ``123456789012345678901234567890`` would be
stored as ``1.2345678901234568e+29``, something other than what was sent. So such an integer
is refused, with a reason, by the producer and by the fold alike; send it as a string.
Numbers with a fraction or an exponent are IEEE 754 doubles, as in JavaScript.

The check reads the JSON text, not the parsed value (where the integer is already a float).
It is linear in the text, needs no recursion, and costs one scan for a run of 19 digits
unless the text has one.
"""

from __future__ import annotations

import re
from typing import Final

__all__ = ["MAX_INT", "MIN_INT", "out_of_range_integer"]

#: The integers orjson reads and writes exactly (signed and unsigned 64-bit together).
MIN_INT: Final = -(2**63)
MAX_INT: Final = 2**64 - 1

#: Any integer outside the range has at least 19 digits.
_LONG_DIGITS: Final = re.compile(rb"[0-9]{19}")
#: A JSON string (skipped whole, so digits inside strings never count) or a JSON number.
_TOKEN: Final = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"|-?[0-9]+(?:\.[0-9]+)?(?:[eE][-+]?[0-9]+)?')
_CLIP: Final = 40


def out_of_range_integer(text: bytes | str) -> str | None:
    """The reason ``text`` (valid JSON) cannot be stored exactly — it holds an integer outside
    ``MIN_INT..MAX_INT`` — or None when it can."""
    data = text.encode() if isinstance(text, str) else text
    if _LONG_DIGITS.search(data) is None:
        return None
    for match in _TOKEN.finditer(data):
        token = match.group()
        if token[0] == 0x22 or len(token) < 19 or any(c in token for c in b".eE"):
            continue
        digits = len(token) - (token[0] == 0x2D)
        # Over 20 digits is out of range whatever they are; int() of them is never needed.
        if digits > 20 or not MIN_INT <= int(token) <= MAX_INT:
            shown = token.decode()
            if len(shown) > _CLIP:
                shown = f"{shown[: _CLIP - 3]}... ({digits} digits)"
            return (
                f"the integer {shown} is outside the range a JSON number is stored in "
                f"({MIN_INT} to {MAX_INT}); send it as a string"
            )
    return None
