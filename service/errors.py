"""The core's refusals as values: DomainError and its kinds, each a code, a message and
details, and no HTTP status. The web layer maps each kind to one (service/web/app.py,
`api_error`); its own error, ApiError, with a status, is in service/web/errors.py.
"""

from __future__ import annotations

from typing import Any


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


class Invalid(DomainError):
    """A request the core cannot take as it is (an unknown pipeline, inputs its schema
    refuses); `code` says what, `details` may name the field."""


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
