"""Errors as values. Two kinds:

* the core's refusals (DomainError and its kinds): a code, a message and details, no
  status; the web layer maps each kind to one (service/web/app.py, `api_error`);
* ApiError, the web layer's own: a status besides, raised where a request is refused.
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


class DomainError(Exception):
    """A refusal the core states in its own words. `code` and `message` are the API's
    JSON error as it is answered, `details` its further fields, in order."""

    def __init__(self, code: str, message: str, **details: Any) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.details = details


class NotFound(DomainError):
    def __init__(self, kind: str, ident: str) -> None:
        super().__init__("not_found", f"no {kind} with id {ident!r}")


class Conflict(DomainError):
    """The request clashes with what is stored (a generation still running, a reused
    client_request_id); `code` says which clash."""


class JournalRefused(DomainError):
    """The journal took no write: the caller's transaction did not happen."""


class JournalClosed(JournalRefused):
    def __init__(self) -> None:
        super().__init__("shutting_down", "the server is shutting down")


class StorageUnavailable(JournalRefused):
    """The database refused the write (busy, full, read-only); a later one may pass."""

    def __init__(self, message: str) -> None:
        super().__init__("storage_unavailable", message)


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
