"""Logging: text or one JSON object a line, each record with the request, project,
generation and token subject it belongs to (from context variables, so no call site
passes them). No token reaches a log: every line is redacted as it is formatted."""

from __future__ import annotations

import logging
import re
import sys
from contextvars import ContextVar
from typing import Any, Final

import orjson

from service.config import LogSettings

REQUEST_ID_HEADER: Final = "X-Request-ID"
# A caller's request id is echoed into logs and headers: keep it short and inert.
SAFE_REQUEST_ID: Final = re.compile(r"[A-Za-z0-9._:-]{1,64}")
TEXT_FORMAT: Final = "%(asctime)s %(levelname)s %(name)s: %(message)s"
REDACTED: Final = "[redacted]"
# `token=` in any URL (`?token=`, `&access_token=`), up to where a query value ends, and
# anything shaped like a JWT (three base64url parts, the first a JSON object's `{"`).
_SECRETS: Final = re.compile(
    r"(?P<key>token=)[^&\s\"'#;,]+|eyJ[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*",
    re.IGNORECASE,
)

request_id: ContextVar[str | None] = ContextVar("request_id", default=None)
project_id: ContextVar[str | None] = ContextVar("project_id", default=None)
generation_id: ContextVar[str | None] = ContextVar("generation_id", default=None)
# A scoped token's `sub` claim: who the app says is behind the request.
subject: ContextVar[str | None] = ContextVar("subject", default=None)

_CONTEXT: Final = (
    ("request_id", request_id),
    ("project_id", project_id),
    ("generation_id", generation_id),
    ("subject", subject),
)


def redact(text: str) -> str:
    """`text` with every token in it replaced by [redacted]."""
    return _SECRETS.sub(_redacted, text)


def _redacted(match: re.Match[str]) -> str:
    return (match.group("key") or "") + REDACTED


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record))


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name, var in _CONTEXT:
            value = var.get()
            if value is not None:
                entry[name] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return redact(orjson.dumps(entry).decode())


class _ContextFilter(logging.Filter):
    """Adds the context to text records too: `... [request_id=... project_id=...]`."""

    def filter(self, record: logging.LogRecord) -> bool:
        parts = [f"{name}={var.get()}" for name, var in _CONTEXT if var.get() is not None]
        record.context = f" [{' '.join(parts)}]" if parts else ""
        return True


def configure(settings: LogSettings) -> None:
    """Send the root logger to stderr in the configured format."""
    handler = logging.StreamHandler(sys.stderr)
    if settings.format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.addFilter(_ContextFilter())
        handler.setFormatter(TextFormatter(TEXT_FORMAT + "%(context)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(settings.level.upper())
