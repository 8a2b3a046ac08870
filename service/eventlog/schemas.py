"""The JSON Schema of every event type: the built-ins, the pipelines' and the app's own.

Each schema describes an event as a client receives it: the flat object of SSE `data:`
and of /events, the envelope (`id`, `type`, `project_id`, `generation_id`, `ts`) and its
type's fields. The built-ins are written here from what the code emits
(generation/drafts.py, runner.py, endings.py, lifecycle.py; the `stream.cursor` frame of
web/streams.py); a pipeline declares its payload's schema (generation/pipeline.py
EventSpec) and an app its events' `data` (config `[events] schemas`, or
`Schemas.declare_app`). `Schemas` holds them all with their validators, each compiled
once (jsonschema's Draft 2020-12 validator, the reference implementation), and serves
them as one document (GET /api/events/schemas).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final

import orjson
from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError, best_match

from service.protocol import ANY_APP_EVENT, APP_PREFIX, STREAM_CURSOR, EventType

Schema = dict[str, Any]

DIALECT: Final = "https://json-schema.org/draft/2020-12/schema"
# Each type's schema is a resource of its own inside the served document, so a `$ref`
# of a declared schema to its own `#/$defs/...` still resolves inside it.
ID_PREFIX: Final = "urn:genstream:event:"
# App events: `app.` then dotted lowercase words; what an app publishes cannot be
# mistaken for the service's own (generation.*, message.*) or a pipeline's.
APP_TYPE_PATTERN: Final = r"^app\.[a-z0-9][a-z0-9_-]*(\.[a-z0-9][a-z0-9_-]*)*$"
APP_TYPE: Final = re.compile(APP_TYPE_PATTERN)
MAX_TYPE_CHARS: Final = 64
ENVELOPE_FIELDS: Final = ("id", "type", "project_id", "generation_id", "ts")

_STRING: Final[Schema] = {"type": "string"}
_ID: Final[Schema] = {"type": "string", "minLength": 1}
_MILLIS: Final[Schema] = {"type": "integer", "minimum": 0}
_COUNT: Final[Schema] = {"type": "integer", "minimum": 0}
_EVENT_ID: Final[Schema] = {"type": "integer", "minimum": 0, "maximum": 2**63 - 1}
_SHA256: Final[Schema] = {"type": "string", "pattern": "^[0-9a-f]{64}$"}


def exact(required: Mapping[str, Schema], **optional: Schema) -> Schema:
    """An object of these fields and no other: those of `required` required (the one
    helper for the built-ins' schemas and the pipelines')."""
    return {
        "type": "object",
        "required": list(required),
        "properties": {**required, **optional},
        "additionalProperties": False,
    }


_MESSAGE_STATUS: Final[Schema] = {"enum": ["complete", "pending", "success", "error", "cancelled"]}
_MESSAGE: Final = exact(
    {
        "id": _ID,
        "project_id": _ID,
        "generation_id": {"type": ["string", "null"]},
        "role": {"enum": ["user", "assistant"]},
        "status": _MESSAGE_STATUS,
        "content": _STRING,
        "created_at": _MILLIS,
        "updated_at": _MILLIS,
    }
)
_STAGE_ITEM: Final = exact({"id": _ID, "label": _STRING}, start=_COUNT, end=_COUNT)
_USAGE: Final = exact(
    {"prompt_tokens": _COUNT, "completion_tokens": _COUNT, "total_tokens": _COUNT}
)
_TIMINGS: Final = exact(
    {
        "total_ms": _COUNT,
        "first_token_ms": {"type": ["integer", "null"], "minimum": 0},
        "tokens_per_second": {"type": ["number", "null"], "minimum": 0},
        "stages": {"type": "object", "additionalProperties": _COUNT},
    }
)

# The payload of each built-in type: the fields after the envelope.
BUILTIN_PAYLOADS: Final[Mapping[str, Schema]] = {
    EventType.MESSAGE_CREATED: exact({"message": _MESSAGE}),
    EventType.MESSAGE_DELTA: exact({"message_id": _ID, "delta": _STRING}),
    EventType.MESSAGE_UPDATED: exact(
        {"message": exact({"id": _ID, "status": _MESSAGE_STATUS, "content": _STRING})}
    ),
    EventType.GENERATION_STARTED: exact(
        {
            "stages": {"type": "array", "minItems": 1, "items": _STAGE_ITEM},
            "provider": _STRING,
            "model": _STRING,
        },
        pipeline=_ID,
    ),
    EventType.STAGE: exact(
        {
            "stage": _ID,
            "label": _STRING,
            "status": {"enum": ["active", "complete"]},
            "progress": {"type": "integer", "minimum": 0, "maximum": 100},
        }
    ),
    EventType.FILE_STARTED: exact({"path": _ID, "replaces": {"type": "boolean"}}),
    EventType.FILE_DELTA: exact(
        {"path": _ID, "delta": _STRING, "line": {"type": "integer", "minimum": 1}}
    ),
    EventType.FILE_COMPLETED: exact({"path": _ID, "size": _COUNT, "sha256": _SHA256}),
    # `check`: closed and path from the parser, json, toml and python from validation.py;
    # a pipeline writing files may name its own.
    EventType.VALIDATION: exact(
        {"check": _ID, "ok": {"type": "boolean"}, "detail": _STRING, "path": _STRING}
    ),
    EventType.GENERATION_COMPLETED: exact(
        {"summary": _STRING, "usage": _USAGE, "timings": _TIMINGS},
        result={"type": "object"},
    ),
    EventType.GENERATION_FAILED: exact(
        {"code": _ID, "message": _STRING, "retryable": {"type": "boolean"}}
    ),
    EventType.GENERATION_CANCELLED: exact({}),
}

STREAM_CURSOR_SCHEMA: Final = exact({"type": {"const": STREAM_CURSOR}, "last_event_id": _EVENT_ID})


class SchemaProblem(ValueError):
    """A schema that cannot be used, or a type that cannot have one: said at start."""


def event_schema(
    type_: str,
    payload: Mapping[str, Any],
    *,
    in_generation: bool,
    type_schema: Schema | None = None,
) -> Schema:
    """The whole event of `type_` (the envelope and the payload's fields), from the JSON
    Schema of its payload, an object schema. Every keyword of the payload's schema is kept
    (its additionalProperties included); the envelope's fields are added to its
    properties and required."""
    if payload.get("type", "object") != "object":
        raise SchemaProblem(f"{type_}: an event's payload schema must be of type object")
    properties = dict(payload.get("properties", {}))
    clash = sorted(set(properties) & set(ENVELOPE_FIELDS))
    if clash:
        raise SchemaProblem(f"{type_}: a payload cannot carry the envelope's field {clash[0]!r}")
    envelope: Schema = {
        "id": _EVENT_ID,
        "type": type_schema or {"const": type_},
        "project_id": _ID,
        "generation_id": _ID if in_generation else {"type": "null"},
        "ts": _MILLIS,
    }
    required = [*ENVELOPE_FIELDS, *payload.get("required", ())]
    return {
        "$id": ID_PREFIX + type_,
        **payload,
        "type": "object",
        "required": required,
        "properties": {**envelope, **properties},
    }


def app_event_schema(
    type_: str, data: Mapping[str, Any], type_schema: Schema | None = None
) -> Schema:
    """An app event: the envelope, no generation, and `data` as the app declared it (a
    resource of its own: a `$ref` of it to `#/...` stays inside it)."""
    return event_schema(
        type_,
        exact({"data": _data_resource(type_, data)}),
        in_generation=False,
        type_schema=type_schema,
    )


def _data_resource(type_: str, data: Mapping[str, Any]) -> Schema:
    return {"$id": f"{ID_PREFIX}{type_}:data", **data}


def app_type_problem(type_: str) -> str | None:
    """Why `type_` cannot be an app event's type, or None."""
    if len(type_) > MAX_TYPE_CHARS:
        return f"an event type is at most {MAX_TYPE_CHARS} characters"
    if not APP_TYPE.match(type_):
        return f"an app event's type is 'app.' then dotted lowercase words ({APP_TYPE_PATTERN})"
    return None


class Schemas:
    """Every event type's schema and its validator, compiled once. Built-ins at first;
    `add_pipeline_events` and `declare_app` add the others (before the server starts)."""

    def __init__(self) -> None:
        self._schemas: dict[str, Schema] = {}
        self._validators: dict[str, Draft202012Validator] = {}
        # A declared app type's `data` alone, for a publish's answer to name its path.
        self._data: dict[str, Draft202012Validator] = {}
        self._served: bytes | None = None  # document() as JSON, made again after an add
        for type_, payload in BUILTIN_PAYLOADS.items():
            self._add(str(type_), event_schema(type_, payload, in_generation=True))
        self._add(STREAM_CURSOR, {"$id": ID_PREFIX + STREAM_CURSOR, **STREAM_CURSOR_SCHEMA})
        # An app event of a type that declares no schema: any object as its data.
        any_type = {"type": "string", "pattern": APP_TYPE_PATTERN, "maxLength": MAX_TYPE_CHARS}
        self._add(ANY_APP_EVENT, app_event_schema(ANY_APP_EVENT, {"type": "object"}, any_type))

    def add_pipeline_events(self, payloads: Mapping[str, Mapping[str, Any]]) -> None:
        """Pipelines' event types, each with the JSON Schema of its payload (the
        pipelines registry's `{type: schema}`); emitted within a generation."""
        for type_, payload in payloads.items():
            if type_ in self._schemas or type_.startswith(APP_PREFIX):
                raise SchemaProblem(f"event type {type_!r} is already the service's or an app's")
            self._add(type_, event_schema(type_, payload, in_generation=True))

    def declare_app(self, type_: str, data: Mapping[str, Any]) -> None:
        """An app event type and the JSON Schema its `data` must satisfy."""
        problem = app_type_problem(type_)
        if problem is not None:
            raise SchemaProblem(f"{type_!r}: {problem}")
        if type_ in self._schemas:
            raise SchemaProblem(f"app event type {type_!r} is declared twice")
        self._add(type_, app_event_schema(type_, data))
        self._data[type_] = Draft202012Validator(_data_resource(type_, data))

    def load_app_schemas(self, path: Path) -> None:
        """`[events] schemas`: a JSON file mapping app event types to the schemas of their
        `data`, or a directory of `<type>.json` files, each one type's schema."""
        for type_, schema in _read_declared(path):
            self.declare_app(type_, schema)

    def _add(self, type_: str, schema: Schema) -> None:
        try:
            Draft202012Validator.check_schema(schema)
        except SchemaError as exc:
            raise SchemaProblem(f"{type_}: not a JSON Schema (2020-12): {exc.message}") from exc
        self._schemas[type_] = schema
        self._validators[type_] = Draft202012Validator(schema)
        self._served = None

    def __contains__(self, type_: object) -> bool:
        return type_ in self._schemas

    def types(self) -> list[str]:
        return sorted(self._schemas)

    def document(self) -> Schema:
        """What GET /api/events/schemas serves: every type's schema under `$defs`."""
        return {
            "$schema": DIALECT,
            "$id": ID_PREFIX + "schemas",
            "description": (
                "The JSON Schema of every event type, under $defs by type: an event as a "
                "client receives it (SSE data, /events). An app event of a type with no "
                f"schema of its own matches $defs[{ANY_APP_EVENT!r}]."
            ),
            "$defs": {type_: self._schemas[type_] for type_ in self.types()},
        }

    def document_json(self) -> bytes:
        if self._served is None:
            self._served = orjson.dumps(self.document())
        return self._served

    def problem(self, event: Mapping[str, Any]) -> str | None:
        """Why `event` (a flat event object) does not match its type's schema, or None;
        an app event of an undeclared type is held to the generic app schema."""
        type_ = event.get("type")
        if not isinstance(type_, str):
            return "event: its type must be a string"
        validator = self._validators.get(type_)
        if validator is None and type_.startswith(APP_PREFIX):
            validator = self._validators[ANY_APP_EVENT]
        if validator is None:
            return f"event: no schema for its type {type_!r}"
        found = _first_error(validator, event, "event")
        return None if found is None else f"{found[0]}: {found[1]}"

    def data_problem(self, type_: str, data: Any) -> tuple[str, str] | None:
        """Where and why `data` is not what the app type `type_` declared, or None (also
        when it declared nothing)."""
        validator = self._data.get(type_)
        return None if validator is None else _first_error(validator, data, "data")


def _first_error(
    validator: Draft202012Validator, instance: Any, root: str
) -> tuple[str, str] | None:
    """The most relevant error (jsonschema's best_match): its path, its message."""
    error = best_match(validator.iter_errors(instance))
    if error is None:
        return None
    return root + "".join(f"[{part!r}]" for part in error.absolute_path), error.message


def _read_declared(path: Path) -> list[tuple[str, Schema]]:
    if path.is_dir():
        return [(file.stem, _read_json(file)) for file in sorted(path.glob("*.json"))]
    declared = _read_json(path)
    return [(type_, _object(type_, schema, path)) for type_, schema in declared.items()]


def _read_json(path: Path) -> Schema:
    try:
        value = orjson.loads(path.read_bytes())
    except OSError as exc:
        raise SchemaProblem(f"events.schemas: cannot read {path}: {exc.strerror}") from exc
    except orjson.JSONDecodeError as exc:
        raise SchemaProblem(f"events.schemas: {path} is not JSON: {exc}") from exc
    return _object(path.name, value, path)


def _object(what: str, value: Any, path: Path) -> Schema:
    if not isinstance(value, dict):
        raise SchemaProblem(f"events.schemas: {path}: {what} must be a JSON object")
    return value
