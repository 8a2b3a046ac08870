"""Request parameters that are numbers: one parser, one error, whatever the route; and
the regular expression that says the same in the API's description (service/web/openapi.py)."""

from __future__ import annotations

from typing import Final

from service.web.errors import bad_request

# SQLite's INTEGER is 64-bit signed: a larger cursor could not even be compared with an id.
MAX_INTEGER: Final = 2**63 - 1


def non_negative_int(raw: str, field: str, maximum: int = MAX_INTEGER) -> int:
    """`raw` as an integer from 0 to `maximum`, or a 400 naming `field`: ASCII digits and
    nothing else (no sign, no white space), leading zeros allowed."""
    if not raw.isascii() or not raw.isdigit():
        raise bad_request(field, f"must be a non-negative integer, got {raw[:40]!r}")
    digits = raw.lstrip("0") or "0"
    # Length first: int() of a huge digit string is slow, then refused (CPython's limit).
    if len(digits) > len(str(maximum)) or int(digits) > maximum:
        raise bad_request(field, f"must be at most {maximum}")
    return int(digits)


def decimal_pattern(maximum: int = MAX_INTEGER) -> str:
    """A regular expression (ECMA-262 and Python alike) matching exactly the strings that
    non_negative_int accepts for `maximum`: a header's value cannot be typed as an integer
    with a maximum in OpenAPI, so the description spells the range out digit by digit."""
    limit = str(maximum)
    shorter = f"[1-9][0-9]{{0,{len(limit) - 2}}}" if len(limit) > 1 else None
    options = ["0"] if shorter is None else ["0", shorter]
    # Numbers as long as the limit: equal to it up to some digit, then below it there.
    for at, digit in enumerate(limit):
        low = "1" if at == 0 else "0"
        if digit > low:
            below = low if int(digit) - 1 == int(low) else f"[{low}-{int(digit) - 1}]"
            rest = len(limit) - at - 1
            options.append(limit[:at] + below + (f"[0-9]{{{rest}}}" if rest else ""))
    options.append(limit)
    return f"^0*(?:{'|'.join(dict.fromkeys(options))})$"
