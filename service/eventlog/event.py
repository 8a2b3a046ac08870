"""Events: what the journal stores and every client receives, one shape for both."""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from typing import Any, Final

import orjson

from service.eventlog import sse
from service.protocol import STREAM_CURSOR as STREAM_CURSOR
from service.protocol import TERMINAL_TYPES as TERMINAL_TYPES
from service.protocol import EventType

# The names the code uses for the vocabulary's members (service/protocol.py).
MESSAGE_CREATED: Final = EventType.MESSAGE_CREATED
MESSAGE_DELTA: Final = EventType.MESSAGE_DELTA
MESSAGE_UPDATED: Final = EventType.MESSAGE_UPDATED
GENERATION_STARTED: Final = EventType.GENERATION_STARTED
STAGE: Final = EventType.STAGE
FILE_STARTED: Final = EventType.FILE_STARTED
FILE_DELTA: Final = EventType.FILE_DELTA
FILE_COMPLETED: Final = EventType.FILE_COMPLETED
VALIDATION: Final = EventType.VALIDATION
GENERATION_COMPLETED: Final = EventType.GENERATION_COMPLETED
GENERATION_FAILED: Final = EventType.GENERATION_FAILED
GENERATION_CANCELLED: Final = EventType.GENERATION_CANCELLED
ALL_TYPES: Final = frozenset(EventType)
# A type beyond the vocabulary: a pipeline's own (checked against its declaration by the
# runner) or an app's (app.*, checked by eventlog/app_events.py): dotted lowercase words.
OTHER_TYPE: Final = re.compile(r"^[a-z0-9][a-z0-9_-]*(\.[a-z0-9][a-z0-9_-]*)*$")


def now_ms() -> int:
    return time.time_ns() // 1_000_000


@dataclass(frozen=True, slots=True)
class Draft:
    """An event before the journal gives it an id."""

    project_id: str
    generation_id: str | None
    type: str
    payload: dict[str, Any]
    ts: int = field(default_factory=now_ms)

    def __post_init__(self) -> None:
        if self.type not in ALL_TYPES and not OTHER_TYPE.match(self.type):
            raise ValueError(f"unknown event type {self.type!r}")


@dataclass(frozen=True, slots=True)
class Event:
    """A stored event. `data` is the flat JSON object sent as SSE data and by /events;
    `frame` is its SSE frame, encoded once and shared by every subscriber."""

    id: int
    project_id: str
    generation_id: str | None
    type: str
    ts: int
    data: bytes
    frame: bytes

    @property
    def terminal(self) -> bool:
        return self.type in TERMINAL_TYPES


def cursor_frame(last_event_id: int) -> bytes:
    """The `stream.cursor` frame: an `id:` with data, because a data-less `id:` frame is
    ignored by some clients (the npm `eventsource` package 4.x) though WHATWG honours it."""
    data = orjson.dumps({"type": STREAM_CURSOR, "last_event_id": last_event_id})
    return sse.frame(data, event=STREAM_CURSOR, event_id=last_event_id)


@dataclass(frozen=True, slots=True)
class Encoded:
    """A draft encoded but for its id: the flat object's members after `"id"`.

    The journal encodes (a payload orjson refuses fails its caller alone, before any
    write); the storage gives the id as it inserts, and seals."""

    draft: Draft
    rest: bytes  # b'"type":...}': the object's JSON with its opening brace and id cut off

    def seal(self, event_id: int) -> Event:
        """Give the event its id: its data and its frame are built here, once."""
        draft = self.draft
        data = b'{"id":%d,%b' % (event_id, self.rest)
        return Event(
            id=event_id,
            project_id=draft.project_id,
            generation_id=draft.generation_id,
            type=draft.type,
            ts=draft.ts,
            data=data,
            frame=sse.frame(data, event=draft.type, event_id=event_id),
        )


def encode(draft: Draft) -> Encoded:
    """Encode everything but the id (TypeError for a payload orjson cannot encode)."""
    if "id" in draft.payload:
        raise ValueError("an event's payload cannot carry the event's own field 'id'")
    body = {
        "type": draft.type,
        "project_id": draft.project_id,
        "generation_id": draft.generation_id,
        "ts": draft.ts,
        **draft.payload,
    }
    return Encoded(draft, orjson.dumps(body)[1:])


def seal(draft: Draft, event_id: int) -> Event:
    """A draft with its id (what the storage does through encode and Encoded.seal)."""
    return encode(draft).seal(event_id)


def from_row(
    event_id: int, project_id: str, generation_id: str | None, type_: str, ts: int, data: bytes
) -> Event:
    return Event(
        id=event_id,
        project_id=project_id,
        generation_id=generation_id,
        type=type_,
        ts=ts,
        data=data,
        frame=sse.frame(data, event=type_, event_id=event_id),
    )
