"""The web layer's own error: ApiError, a refusal with its HTTP status.

Raised where a request is refused (a bad field, a body or a request HTTP cannot read, a
missing token, a full stream limit); the error middleware (service/web/app.py) answers it
as JSON. The core never sees it: it raises the domain errors of service/errors.py, which
app.py's `api_error` maps to a status.
"""

from __future__ import annotations

import logging
import re
from typing import Any, Final

log = logging.getLogger(__name__)

MALFORMED_REQUEST: Final = "malformed_request"
_MAX_REASON_CHARS: Final = 200
# aiohttp's str() of its HTTP errors: "400, message:" on a line, then the message.
_STATUS_LINE: Final = re.compile(r"\d{3}, message:")


class ApiError(Exception):
    """Raised once where the problem is found; the error middleware turns it into JSON."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        *,
        headers: dict[str, str] | None = None,
        **details: Any,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers or {}
        self.details = details

    def body(self) -> dict[str, Any]:
        return {"error": {"code": self.code, "message": self.message, **self.details}}


def bad_request(field: str, message: str) -> ApiError:
    return ApiError(400, "invalid_request", f"{field}: {message}", field=field)


def malformed_request(reason: str, remote: str | None) -> ApiError:
    """A request HTTP cannot read (a NUL in a header, a bad chunk size, an unknown method,
    a body that does not decode), said in one WARNING line: no traceback, since any client
    can send these as fast as it likes. `reason` is aiohttp's message; only its first line
    is kept ("Invalid header value char"), not the quoted bytes of the lines after it."""
    lines = [line.strip() for line in reason.strip().splitlines()]
    if lines and _STATUS_LINE.fullmatch(lines[0]):
        lines = lines[1:]
    first = lines[0].rstrip(":").strip()[:_MAX_REASON_CHARS] if lines else ""
    first = first or "unparsable request"
    log.warning("malformed HTTP request from %s: %s", remote, first)
    return ApiError(400, MALFORMED_REQUEST, f"malformed HTTP request: {first}")
