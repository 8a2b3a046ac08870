"""The one vocabulary of genstream: event types, statuses and close reasons.

Shared by the server, the Python client and the page (which imports it as the ES module
/static/protocol.js, written from this one at startup: service/web/protocol_js.py). A
StrEnum member is its string, so it goes into JSON, SQL parameters and SSE fields as it is.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Final

# Everything the vocabulary holds: also what the page's /static/protocol.js exports
# (service/web/protocol_js.py).
__all__ = [
    "ACTIVE_STATUSES",
    "ANY_APP_EVENT",
    "APP_PREFIX",
    "STREAM_CURSOR",
    "TERMINAL_TYPES",
    "CloseReason",
    "EventType",
    "GenerationStatus",
]


class EventType(StrEnum):
    """What an event in the log is (its `type`, and its SSE `event:` field)."""

    MESSAGE_CREATED = "message.created"
    MESSAGE_DELTA = "message.delta"
    MESSAGE_UPDATED = "message.updated"
    GENERATION_STARTED = "generation.started"
    STAGE = "stage"
    FILE_STARTED = "file.started"
    FILE_DELTA = "file.delta"
    FILE_COMPLETED = "file.completed"
    VALIDATION = "validation"
    GENERATION_COMPLETED = "generation.completed"
    GENERATION_FAILED = "generation.failed"
    GENERATION_CANCELLED = "generation.cancelled"


TERMINAL_TYPES: Final = frozenset(
    {EventType.GENERATION_COMPLETED, EventType.GENERATION_FAILED, EventType.GENERATION_CANCELLED}
)
# Not stored, not an EventType: the first frame of a project stream opened without a
# cursor, carrying the id it starts after, so a client that drops before its first event
# resumes from there.
STREAM_CURSOR: Final = "stream.cursor"
# An app's own events (README "App events and typed events") have types `app.<name>`;
# GET /api/events/schemas holds the schema of one whose type declares none under this.
APP_PREFIX: Final = "app."
ANY_APP_EVENT: Final = "app.*"


class GenerationStatus(StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"


# A generation in one of these has not ended: it holds its project, its streams wait.
ACTIVE_STATUSES: Final = frozenset({GenerationStatus.PENDING, GenerationStatus.RUNNING})


class CloseReason(StrEnum):
    """Why a stream ended, as its streaming session records it (README "How a stream ends")."""

    CLIENT_GONE = "client_gone"
    COMPLETED = "completed"
    SLOW_CLIENT = "slow_client"
    SEND_TIMEOUT = "send_timeout"
    SHUTDOWN = "shutdown"
    ERROR = "error"
