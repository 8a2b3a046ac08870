"""What the application holds, under one typed key."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from aiohttp import web

from service.config import Settings
from service.eventlog.broker import Broker
from service.eventlog.journal import Journal
from service.eventlog.schemas import Schemas
from service.metrics import Metrics
from service.storage.interface import Storage
from service.web.connections import Connections

if TYPE_CHECKING:
    from service.generation.lifecycle import Generations


@dataclass
class Services:
    settings: Settings
    storage: Storage
    broker: Broker
    journal: Journal
    connections: Connections
    generations: Generations
    metrics: Metrics


SERVICES = web.AppKey("services", Services)
# Every event type's schema: held from create_app on, so that an embedding app declares its
# own (service/embed.py) before the server starts.
SCHEMAS = web.AppKey("schemas", Schemas)
