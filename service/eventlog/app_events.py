"""App events: an app's own event (`app.<name>`) on a project's log, through the journal.

Stored and delivered as every event is (durable first, then to every stream of the
project, once, resumes included), with no generation. What an app may publish is held
here, before anything is written: its type in the app's namespace (it cannot forge
generation.* or message.*), its data an object of at most `max_data_bytes`, valid
against its type's schema when one is declared (eventlog/schemas.py).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson

from service.errors import Invalid, NotFound
from service.eventlog.event import Draft, Event
from service.eventlog.journal import Journal
from service.eventlog.schemas import Schemas, app_type_problem
from service.protocol import APP_PREFIX
from service.storage.interface import Tx


def check(schemas: Schemas, type_: Any, data: Any, max_data_bytes: int) -> None:
    """Invalid unless `type_` and `data` make an app event this server takes."""
    if not isinstance(type_, str):
        raise Invalid("invalid_request", "type: must be a string", field="type")
    if not type_.startswith(APP_PREFIX):
        raise Invalid(
            "reserved_event_type",
            f"type {type_[:80]!r}: an app publishes in its own namespace, app.<name>; "
            "every other type (generation.*, message.*, stage...) is the service's or a "
            "pipeline's",
            field="type",
        )
    problem = app_type_problem(type_)
    if problem is not None:
        raise Invalid("invalid_event_type", f"type {type_[:80]!r}: {problem}", field="type")
    if not isinstance(data, Mapping):
        raise Invalid("invalid_request", "data: must be a JSON object", field="data")
    size = len(orjson.dumps(data))
    if size > max_data_bytes:
        raise Invalid(
            "event_too_large",
            f"data: {size} bytes as JSON, more than events.max_data_bytes ({max_data_bytes})",
            field="data",
        )
    invalid = schemas.data_problem(type_, data)
    if invalid is not None:
        where, message = invalid
        raise Invalid("invalid_event_data", f"{where}: {message}", field=where)


async def publish(
    journal: Journal,
    schemas: Schemas,
    project_id: str,
    type_: str,
    data: Mapping[str, Any],
    *,
    max_data_bytes: int,
) -> Event:
    """Store an app event on the project's log and deliver it; the stored event. Invalid
    or NotFound before anything is written."""
    check(schemas, type_, data, max_data_bytes)

    async def project_exists(tx: Tx) -> None:
        # In the append's own transaction: the event is written only with its project.
        if not await tx.project_exists(project_id):
            raise NotFound("project", project_id)

    (event,) = await journal.append(
        Draft(project_id, None, type_, {"data": dict(data)}), check=project_exists
    )
    return event
