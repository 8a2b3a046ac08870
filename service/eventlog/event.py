"""Events: what the journal stores and every client receives, one shape for both."""

from __future__ import annotations

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
        if self.type not in ALL_TYPES:
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


def seal(draft: Draft, event_id: int) -> Event:
    """Give a draft its id: build the flat object once, and its frame once."""
    body = {
        "id": event_id,
        "type": draft.type,
        "project_id": draft.project_id,
        "generation_id": draft.generation_id,
        "ts": draft.ts,
        **draft.payload,
    }
    data = orjson.dumps(body)
    return Event(
        id=event_id,
        project_id=draft.project_id,
        generation_id=draft.generation_id,
        type=draft.type,
        ts=draft.ts,
        data=data,
        frame=sse.frame(data, event=draft.type, event_id=event_id),
    )


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
