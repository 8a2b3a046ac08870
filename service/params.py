"""Request parameters that are numbers: one parser, one error, whatever the route."""

from __future__ import annotations

from typing import Final

from service.errors import bad_request

# SQLite's INTEGER is 64-bit signed: a larger cursor could not even be compared with an id.
MAX_INTEGER: Final = 2**63 - 1


def non_negative_int(raw: str, field: str, maximum: int = MAX_INTEGER) -> int:
    """`raw` as an integer from 0 to `maximum`, or a 400 naming `field`."""
    text = raw.strip()
    # Length first: int() of a huge digit string is slow, then refused (CPython's limit).
    if not text.isascii() or not text.isdigit() or len(text) > len(str(MAX_INTEGER)):
        raise bad_request(field, f"must be a non-negative integer, got {raw[:40]!r}")
    value = int(text)
    if value > maximum:
        raise bad_request(field, f"must be at most {maximum}")
    return value
