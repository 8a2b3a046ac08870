"""For Python code that embeds genstream (runs its aiohttp application in its own
process): declare app event types and publish app events, as the HTTP API does.

    app = create_app(settings)                      # service.web.app
    declare_event(app, "app.typing", {"type": "object", "required": ["user"]})
    ... once the app has started (its services are up):
    event = await publish(app, project_id, "app.typing", {"user": "u-42"})

An app event goes through the journal like any event: stored first, then delivered to
every stream of the project, once (README "App events and typed events").
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from aiohttp import web

from service.config import EventsSettings
from service.eventlog import app_events
from service.eventlog.event import Event
from service.eventlog.journal import Journal
from service.eventlog.schemas import Schemas
from service.web.context import SCHEMAS, SERVICES

__all__ = ["declare_event", "publish"]


def declare_event(app: web.Application, type_: str, schema: Mapping[str, Any]) -> None:
    """Declare an app event type and the JSON Schema of its `data`: a publish of it,
    through the API or `publish`, is then checked against it, and GET
    /api/events/schemas serves it. Before the app starts (SchemaProblem for a type
    outside `app.*`, one declared twice, or a schema that is not one)."""
    if app.frozen:
        raise RuntimeError("declare event types before the application starts")
    app[SCHEMAS].declare_app(type_, schema)


async def publish(
    target: web.Application | Journal,
    project_id: str,
    type_: str,
    data: Mapping[str, Any],
    *,
    schemas: Schemas | None = None,
) -> Event:
    """Publish an app event on the project's log; the stored event (its id, its JSON).
    `target`: a started application (its schemas and events.max_data_bytes), or a
    journal (the built-in schemas, or `schemas`, and the default size cap). Raises
    service.errors.Invalid for a type outside `app.*`, data too large or not what its
    schema says, NotFound for an unknown project: nothing is written then."""
    if isinstance(target, Journal):
        limit = EventsSettings().max_data_bytes
        return await app_events.publish(
            target, schemas or Schemas(), project_id, type_, data, max_data_bytes=limit
        )
    services = target[SERVICES]
    return await app_events.publish(
        services.journal,
        schemas or target[SCHEMAS],
        project_id,
        type_,
        data,
        max_data_bytes=services.settings.events.max_data_bytes,
    )
