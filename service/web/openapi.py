"""The API described in OpenAPI 3.2, served at /api/openapi.json.

The description is what the server does, to the character: what it accepts, what it
refuses with a 400, every status it answers, the shape of every body and of every event
on a stream. Limits come from the settings and from the constants the handlers check
(service/web/api.py, service/web/params.py), so the two cannot drift apart; and
tests/test_openapi.py runs schemathesis against the real server with it.

3.2, not 3.1: `itemSchema` is how 3.2 describes each event of a text/event-stream.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

from aiohttp import hdrs

from service.auth import (
    ID_PATTERN,
    MAX_ID_CHARS,
    MAX_PROJECTS,
    MAX_SUBJECT_CHARS,
    SUBJECT_PATTERN,
    Right,
)
from service.config import Settings
from service.eventlog import event as events
from service.eventlog.event import OTHER_TYPE
from service.eventlog.schemas import APP_TYPE_PATTERN, DIALECT, MAX_TYPE_CHARS
from service.web.api import (
    DATA_IMAGE_PREFIX,
    DEFAULT_EVENTS_LIMIT,
    DEFAULT_SEARCH_LIMIT,
    MAX_EVENTS_LIMIT,
    MAX_NAME_CHARS,
    MAX_REQUEST_ID_CHARS,
    MAX_SEARCH_CHARS,
    MAX_SEARCH_LIMIT,
    MAX_TITLE_CHARS,
    MAX_URL_CHARS,
    TEXT_PATTERN,
    WEB_URL_SCHEMES,
)
from service.web.auth import COOKIE, CSRF_HEADER, POLICIES, QUERY_TOKEN, Reach
from service.web.params import MAX_INTEGER, decimal_pattern
from service.web.streams import CURSOR_PARAM

Schema = dict[str, Any]

VERSION: Final = "3.2.0"
JSON: Final = "application/json"
SSE: Final = "text/event-stream"


def _ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


def _nullable(schema: Schema) -> Schema:
    return {"oneOf": [schema, {"type": "null"}]}


def _object(required: dict[str, Schema], **optional: Schema) -> Schema:
    return {
        "type": "object",
        "required": list(required),
        "properties": {**required, **optional},
    }


STRING: Final[Schema] = {"type": "string"}
MILLIS: Final[Schema] = {"type": "integer", "description": "Unix time in milliseconds"}
PROCESS_ID: Final[Schema] = {"type": "integer", "description": "the serving process's id"}
EVENT_ID: Final[Schema] = {"type": "integer", "minimum": 0, "maximum": MAX_INTEGER}
SCHEMAS_PATH: Final = "/api/events/schemas"
# A pipeline's name (GET /api/pipelines; describe() lists those installed as its enum).
PIPELINE_NAME: Final[Schema] = {"type": "string", "maxLength": 40}
# Built-in, a pipeline's (dotted lowercase words) or an app's (app.*): each type's own
# schema is in the document at SCHEMAS_PATH.
EVENT_TYPE: Final[Schema] = {
    "type": "string",
    "pattern": OTHER_TYPE.pattern,
    "description": f"the event's type; its schema: {SCHEMAS_PATH}",
}


def _text(max_chars: int, what: str) -> Schema:
    return {
        "type": "string",
        "maxLength": max_chars,
        # Not only white space, no U+0000: the handlers' own checks, the same characters
        # (api.SPACES).
        "pattern": TEXT_PATTERN,
        "description": f"{what}; not empty, not only white space, no U+0000",
    }


def _image_url() -> Schema:
    web_url = "|".join(scheme.removesuffix("://") for scheme in WEB_URL_SCHEMES)
    return {
        "type": "string",
        "anyOf": [
            {"pattern": f"^(?:{web_url})://", "maxLength": MAX_URL_CHARS},
            {"pattern": f"^{DATA_IMAGE_PREFIX}"},
        ],
        "description": "an http(s) URL, or an image inline as a data:image/ URL",
    }


def _schemas(settings: Settings) -> dict[str, Schema]:
    limits = settings.generation
    error_detail = _object(
        {"code": STRING, "message": STRING},
        field={"type": "string", "description": "the input a 400 refused"},
        generation_id={"type": "string", "description": "the generation a 409 is about"},
    )
    generation = _object(
        {
            "id": STRING,
            "project_id": STRING,
            "client_request_id": _nullable(STRING),
            "prompt": STRING,
            "image_urls": {"type": "array", "items": STRING},
            "status": {"enum": ["pending", "running", "completed", "failed", "cancelled"]},
            "stage": _nullable(STRING),
            "progress": {"type": "integer", "minimum": 0, "maximum": 100},
            "error": _nullable(
                _object({"code": STRING, "message": STRING, "retryable": {"type": "boolean"}})
            ),
            "usage": _nullable({"type": "object"}),
            "timings": _nullable({"type": "object"}),
            "provider": STRING,
            "model": STRING,
            "user_message_id": STRING,
            "assistant_message_id": STRING,
            "first_event_id": EVENT_ID,
            "created_at": MILLIS,
            "started_at": _nullable(MILLIS),
            "finished_at": _nullable(MILLIS),
            "pipeline": {"type": "string", "description": "the pipeline that runs it"},
            "inputs": {"type": "object", "description": "the submit's inputs"},
        }
    )
    message = _object(
        {
            "id": STRING,
            "project_id": STRING,
            "generation_id": _nullable(STRING),
            "role": {"enum": ["user", "assistant"]},
            "status": {"enum": ["complete", "pending", "success", "error", "cancelled"]},
            "content": STRING,
            "created_at": MILLIS,
            "updated_at": MILLIS,
        }
    )
    file_fields: dict[str, Schema] = {
        "path": STRING,
        "size": {"type": "integer", "minimum": 0},
        "sha256": {"type": "string", "pattern": "^[0-9a-f]{64}$"},
        "generation_id": STRING,
        "updated_at": MILLIS,
    }
    event = _object(
        {
            "id": EVENT_ID,
            "type": EVENT_TYPE,
            "project_id": STRING,
            "generation_id": _nullable(STRING),
            "ts": MILLIS,
        },
    )
    event["description"] = (
        "One stored event: these fields, then those of its type (message.delta: "
        "message_id, delta; file.started: path, replaces; generation.failed: code, "
        "message, retryable; an app event: data). The exact schema of each type, built-in, "
        f"a pipeline's or an app's, is served at {SCHEMAS_PATH} (operation eventSchemas)."
    )
    event["externalDocs"] = {
        "description": "every event type's JSON Schema (2020-12), under $defs by type",
        "url": SCHEMAS_PATH,
    }
    return {
        "Error": _object({"error": error_detail}),
        "Project": _object(
            {
                "id": STRING,
                "name": STRING,
                "created_at": MILLIS,
                "status": {"enum": ["idle", "generating"]},
                "active_generation": _nullable(_ref("Generation")),
                "last_event_id": EVENT_ID,
                "pipeline": _nullable(
                    {"type": "string", "description": "its default pipeline (null: the config's)"}
                ),
            }
        ),
        "Generation": generation,
        "Message": message,
        "File": _object(file_fields),
        "FileWithContent": _object({**file_fields, "content": STRING}),
        "Event": event,
        "AppEventBody": {
            **_object(
                {
                    "type": {
                        "type": "string",
                        "pattern": APP_TYPE_PATTERN,
                        "maxLength": MAX_TYPE_CHARS,
                        "description": "app. then dotted lowercase words: never the service's",
                    },
                    "data": {
                        "type": "object",
                        "description": (
                            f"at most {settings.events.max_data_bytes} bytes as JSON; checked "
                            "against its type's schema when one is declared"
                        ),
                    },
                }
            ),
            "additionalProperties": False,
        },
        "StreamCursor": _object(
            {"type": {"const": events.STREAM_CURSOR}, "last_event_id": EVENT_ID}
        ),
        "ProjectBody": {
            **_object(
                {},
                name=_text(MAX_NAME_CHARS, "trimmed of white space when stored"),
                pipeline={**PIPELINE_NAME, "description": "the project's default pipeline"},
            ),
            "additionalProperties": False,
        },
        "ProjectPatch": {
            **_object(
                {
                    "pipeline": {
                        "anyOf": [PIPELINE_NAME, {"type": "null"}],
                        "description": "the project's default pipeline; null clears it",
                    }
                }
            ),
            "additionalProperties": False,
        },
        "GenerationBody": {
            **_object(
                {"prompt": _text(limits.max_prompt_chars, "the request to the model")},
                image_urls={
                    "type": "array",
                    "maxItems": limits.max_image_urls,
                    "items": _image_url(),
                },
                client_request_id=_text(
                    MAX_REQUEST_ID_CHARS,
                    "makes a retry safe: the same id and prompt answer with the generation "
                    "the first made (202, created: false); the same id with another prompt "
                    "or other images is a 409 client_request_id_reused",
                ),
                pipeline={
                    "type": "string",
                    "maxLength": 40,
                    "description": "the pipeline to run (GET /api/pipelines); default: the "
                    "project's, else generation.pipeline; an unknown one is a 400 "
                    "unknown_pipeline",
                },
                inputs={
                    "type": "object",
                    "description": "the pipeline's inputs, checked against its inputs "
                    "schema (a 400 invalid_inputs names the first error)",
                },
            ),
            "additionalProperties": False,
        },
        **_token_schemas(settings),
        **_knowledge_schemas(settings),
    }


def _with_pipelines(
    schemas: dict[str, Schema],
    settings: Settings,
    pipelines: Mapping[str, Mapping[str, Any]] | None,
) -> dict[str, Schema]:
    """A submit's `pipeline` is one of those installed, and its `inputs` follow that
    pipeline's inputs schema (`pipelines`: name -> inputs schema); with no `pipeline`,
    the configured default's (a project's own default is not described here)."""
    if not pipelines:
        return schemas
    names = sorted(pipelines)
    schemas["ProjectBody"]["properties"]["pipeline"]["enum"] = names
    schemas["ProjectPatch"]["properties"]["pipeline"]["anyOf"][0] = {**PIPELINE_NAME, "enum": names}
    body = schemas["GenerationBody"]
    body["properties"]["pipeline"]["enum"] = names
    default = settings.generation.pipeline
    body["allOf"] = [
        {
            "if": {"required": ["pipeline"], "properties": {"pipeline": {"const": name}}},
            "then": {"properties": {"inputs": dict(inputs)}},
        }
        for name, inputs in sorted(pipelines.items())
    ]
    if default in pipelines:
        body["allOf"].append(
            {
                "if": {"not": {"required": ["pipeline"]}},
                "then": {"properties": {"inputs": dict(pipelines[default])}},
            }
        )
    return schemas


def _token_schemas(settings: Settings) -> dict[str, Schema]:
    auth = settings.auth
    project_id = {"type": "string", "maxLength": MAX_ID_CHARS, "pattern": f"^{ID_PATTERN}$"}
    body = _object(
        {},
        projects={
            "type": "array",
            "maxItems": MAX_PROJECTS,
            "items": project_id,
            "description": "the project ids it reaches (or project_prefix, or both)",
        },
        project_prefix={**project_id, "description": "it reaches every project id so starting"},
        rights={
            "type": "array",
            "minItems": 1,
            "items": {"enum": [right.value for right in Right]},
            "default": [Right.READ.value],
            "description": (
                "read: streams, events, messages, files; write: submit, cancel; "
                "publish: app events (POST /api/projects/{pid}/events)"
            ),
        },
        expires_in={
            "type": "integer",
            "minimum": 1,
            "maximum": auth.jwt_max_ttl_seconds,
            "default": auth.jwt_default_ttl_seconds,
            "description": "seconds from now",
        },
        subject={
            "type": "string",
            "maxLength": MAX_SUBJECT_CHARS,
            "pattern": f"^{SUBJECT_PATTERN}$",
            "description": "who it is for (the `sub` claim, logged): printable ASCII",
        },
    )
    body["additionalProperties"] = False
    body["anyOf"] = [
        {"required": ["projects"], "properties": {"projects": {"minItems": 1}}},
        {"required": ["project_prefix"]},
    ]
    return {
        "TokenBody": body,
        "Token": _object(
            {
                "token": STRING,
                "token_type": {"const": "Bearer"},
                "expires_at": {"type": "integer", "description": "Unix time in seconds"},
                "expires_in": {"type": "integer", "minimum": 1},
                "claims": {"type": "object"},
            }
        ),
    }


# -- parameters and answers ------------------------------------------------------------


def _path(name: str) -> Schema:
    return {"name": name, "in": "path", "required": True, "schema": STRING}


def _query(name: str, schema: Schema, description: str) -> Schema:
    return {"name": name, "in": "query", "schema": schema, "description": description}


CURSORS: Final = [
    {
        "name": hdrs.LAST_EVENT_ID,
        "in": "header",
        "schema": {"type": "string", "pattern": decimal_pattern()},
        "description": "resume after this event id (0 to 2^63-1); wins over the query",
    },
    _query(CURSOR_PARAM, EVENT_ID, "resume after this event id, for a new EventSource"),
]


def _error(description: str) -> Schema:
    return {"description": description, "content": {JSON: {"schema": _ref("Error")}}}


def _ok(description: str, schema: Schema) -> Schema:
    return {"description": description, "content": {JSON: {"schema": schema}}}


def _stream_ok() -> Schema:
    data = {
        "type": "string",
        "contentMediaType": JSON,
        "contentSchema": {"oneOf": [_ref("Event"), _ref("StreamCursor")]},
    }
    return {
        "description": (
            "Server-Sent Events: `retry:` and a `: connected` comment, then one frame per "
            "event (`id:` its id, `event:` its type, `data:` its JSON on one line) and a "
            "`: ping` comment on quiet stretches. A project stream without a cursor starts "
            "with a stream.cursor frame; a generation stream ends after the generation's "
            "terminal event."
        ),
        "content": {
            SSE: {
                "itemSchema": {
                    "type": "object",
                    "required": ["data"],
                    "properties": {
                        "event": EVENT_TYPE,
                        "id": {"type": "string", "pattern": decimal_pattern()},
                        "data": data,
                        "retry": {"type": "integer", "minimum": 0},
                    },
                }
            }
        },
    }


# The error answers an operation can give, by name: (status, when).
_ERRORS: Final = {
    "bad_input": ("400", "bad input: error.field names it"),
    "unknown_id": ("404", "no such project, generation or file"),
    "busy": (
        "409",
        "the project is busy with another generation (generation_running), or "
        "client_request_id was used for another prompt (client_request_id_reused); "
        "error.generation_id names the generation",
    ),
    "too_large": ("413", "the body is larger than server.max_body_bytes (body_too_large)"),
    "write_refused": (
        "503",
        "the database refused the write (storage_unavailable) or the server is shutting "
        "down (shutting_down)",
    ),
    "streams_busy": (
        "503",
        "too many open streams (too_many_streams, with Retry-After), or the database "
        "refused to record the stream (storage_unavailable)",
    ),
}


def _op(
    op_id: str,
    summary: str,
    ok: tuple[str, Schema],
    *errors: str,
    params: list[Schema] | None = None,
    **extra: Any,
) -> Schema:
    responses = dict([ok])
    for name in errors:
        status, when = _ERRORS[name]
        responses[status] = _error(when)
    return {
        "operationId": op_id,
        "summary": summary,
        "parameters": params or [],
        "responses": responses,
        **extra,
    }


def _read(op_id: str, summary: str, answer: Schema, *params: Schema) -> Schema:
    """A GET of something under an id: the thing, or a 404."""
    return _op(op_id, summary, ("200", answer), "unknown_id", params=list(params))


def _stream(op_id: str, summary: str, id_param: Schema) -> Schema:
    return _op(
        op_id,
        summary,
        ("200", _stream_ok()),
        "bad_input",
        "unknown_id",
        "streams_busy",
        params=[id_param, *CURSORS],
    )


def _body(schema: str, *, required: bool, limit: int) -> Schema:
    return {
        "required": required,
        "description": f"at most {limit} bytes",
        "content": {JSON: {"schema": _ref(schema)}},
    }


def _link(op_id: str, **parameters: str) -> Schema:
    """Where an answer's ids lead: the operation, and each parameter's runtime expression."""
    return {"operationId": op_id, "parameters": parameters}


def _array(name: str) -> Schema:
    return {"type": "array", "items": _ref(name)}


PID: Final = _path("pid")
GID: Final = _path("gid")
NEW_PROJECT: Final = "$response.body#/id"
NEW_GENERATION: Final = "$response.body#/generation/id"


def _project_paths(body_limit: int) -> dict[str, Any]:
    created = {
        **_ok("created", _ref("Project")),
        "links": {
            name: _link(op_id, pid=NEW_PROJECT)
            for name, op_id in (
                ("GetProject", "getProject"),
                ("ListMessages", "listMessages"),
                ("ListFiles", "listFiles"),
                ("GetArchive", "getArchive"),
                ("ListEvents", "listEvents"),
                ("PublishEvent", "publishEvent"),
                ("Submit", "submitGeneration"),
            )
        },
    }
    files = {
        **_ok("files by path", _object({"files": _array("File")})),
        "links": {
            "GetFile": _link(
                "getFile", pid="$request.path.pid", path="$response.body#/files/0/path"
            )
        },
    }
    page = _object(
        {"events": _array("Event"), "last_event_id": EVENT_ID, "has_more": {"type": "boolean"}}
    )
    limit = {
        "type": "integer",
        "minimum": 1,
        "maximum": MAX_EVENTS_LIMIT,
        "default": DEFAULT_EVENTS_LIMIT,
    }
    return {
        "/api/projects": {
            "get": _op(
                "listProjects",
                "list projects",
                ("200", _ok("projects", _object({"projects": _array("Project")}))),
            ),
            "post": _op(
                "createProject",
                "create a project",
                ("201", created),
                "bad_input",
                "too_large",
                "write_refused",
                requestBody=_body("ProjectBody", required=False, limit=body_limit),
            ),
        },
        "/api/projects/{pid}": {
            "get": _read("getProject", "one project", _ok("it", _ref("Project")), PID),
            "patch": _op(
                "updateProject",
                "set or clear the project's default pipeline",
                ("200", _ok("the project as it is now", _ref("Project"))),
                "bad_input",
                "unknown_id",
                "too_large",
                "write_refused",
                params=[PID],
                requestBody=_body("ProjectPatch", required=True, limit=body_limit),
            ),
        },
        "/api/projects/{pid}/messages": {
            "get": _read(
                "listMessages",
                "the project's messages",
                _ok("oldest first", _object({"messages": _array("Message")})),
                PID,
            )
        },
        "/api/projects/{pid}/files": {"get": _read("listFiles", "the project's files", files, PID)},
        "/api/projects/{pid}/files/{path}": {
            "get": _read(
                "getFile",
                "one file with its content",
                _ok("it", _ref("FileWithContent")),
                PID,
                _path("path"),
            )
        },
        "/api/projects/{pid}/archive": {
            "get": _read(
                "getArchive",
                "the project's files as a .zip (streamed, each file as the database holds it)",
                # No schema: the body is the zip's bytes (tests/test_archive.py unpacks it).
                {
                    "description": "a zip of every file, at its path",
                    "content": {"application/zip": {}},
                },
                PID,
            )
        },
        "/api/projects/{pid}/events": {
            "get": _op(
                "listEvents",
                "the event log as JSON, for polling",
                ("200", _ok("a page of events in id order", page)),
                "bad_input",
                "unknown_id",
                params=[
                    PID,
                    _query("after", EVENT_ID, "events with an id above this one"),
                    _query("limit", limit, "at most this many events"),
                ],
            ),
            "post": _publish(body_limit),
        },
        "/api/projects/{pid}/stream": {
            "get": _stream("streamProject", "the project's events as SSE, then live", PID)
        },
    }


def _publish(body_limit: int) -> Schema:
    publish = _op(
        "publishEvent",
        "publish an app event on the project's log: stored, then sent to its streams",
        ("201", _ok("the stored event, as /events and the streams carry it", _ref("Event"))),
        "bad_input",
        "unknown_id",
        "too_large",
        "write_refused",
        params=[PID],
        requestBody=_body("AppEventBody", required=True, limit=body_limit),
    )
    publish["responses"]["400"] = _error(
        "bad input (invalid_request, error.field names it); a type outside app.* "
        "(reserved_event_type) or not dotted lowercase words (invalid_event_type); data "
        "over events.max_data_bytes (event_too_large) or not what its type's schema says "
        "(invalid_event_data, error.field its path)"
    )
    return publish


def _event_schema_paths() -> dict[str, Any]:
    document = _object(
        {
            "$schema": {"const": DIALECT},
            "$defs": {"type": "object", "additionalProperties": {"type": "object"}},
        },
        **{"$id": STRING, "description": STRING},
    )
    return {
        SCHEMAS_PATH: {
            "get": _op(
                "eventSchemas",
                "the JSON Schema (2020-12) of every event type: built-in, pipelines', apps'",
                ("200", _ok("one document, each type's schema under $defs by type", document)),
            )
        },
    }


def _knowledge_schemas(settings: Settings) -> dict[str, Schema]:
    """A project's knowledge base, its visitors' personas and its scenes: the state of
    the page and scenes pipelines."""
    count = {"type": "integer", "minimum": 0}
    words = {"type": "array", "items": STRING}
    return {
        "Document": _object(
            {
                "id": STRING,
                "project_id": STRING,
                "title": STRING,
                "content": STRING,
                "created_at": MILLIS,
            }
        ),
        "DocumentBody": {
            **_object(
                {
                    "title": _text(MAX_TITLE_CHARS, "trimmed of white space when stored"),
                    "content": _text(settings.storage.max_document_chars, "its text"),
                }
            ),
            "additionalProperties": False,
        },
        "DocumentHit": _object(
            {
                "document_id": STRING,
                "title": STRING,
                "snippet": {"type": "string", "description": "plain text around the matches"},
                "rank": {"type": "number", "description": "higher is better, within a search"},
            }
        ),
        "Persona": _object(
            {
                "project_id": STRING,
                "visitor_id": STRING,
                "pain_points": words,
                "interests": words,
                "visits": count,
                "updated_at": MILLIS,
            }
        ),
        "Scene": _object(
            {
                "id": STRING,
                "project_id": STRING,
                "position": {"type": "integer"},
                "title": STRING,
                "description": STRING,
                "duration_ms": count,
                "created_at": MILLIS,
                "updated_at": MILLIS,
            }
        ),
    }


def _knowledge_paths(body_limit: int) -> dict[str, Any]:
    limit = {
        "type": "integer",
        "minimum": 1,
        "maximum": MAX_SEARCH_LIMIT,
        "default": DEFAULT_SEARCH_LIMIT,
    }
    query = {"type": "string", "maxLength": MAX_SEARCH_CHARS}
    hits = _object({"results": _array("DocumentHit")})
    return {
        "/api/projects/{pid}/documents": {
            "get": _read(
                "listDocuments",
                "the project's knowledge base",
                _ok("oldest first", _object({"documents": _array("Document")})),
                PID,
            ),
            "post": _op(
                "createDocument",
                "add a document to the project's knowledge base",
                ("201", _ok("the stored document", _ref("Document"))),
                "bad_input",
                "unknown_id",
                "too_large",
                "write_refused",
                params=[PID],
                requestBody=_body("DocumentBody", required=True, limit=body_limit),
            ),
        },
        "/api/projects/{pid}/documents/search": {
            "get": _op(
                "searchDocuments",
                "full-text search of the project's documents: any of the query's words",
                ("200", _ok("best first", hits)),
                "bad_input",
                "unknown_id",
                params=[
                    PID,
                    {
                        **_query("q", query, "words; any other character separates them"),
                        "required": True,
                    },
                    _query("limit", limit, "at most this many results"),
                ],
            )
        },
        "/api/projects/{pid}/documents/{did}": {
            "delete": _op(
                "deleteDocument",
                "remove a document from the knowledge base and its search",
                ("204", {"description": "deleted"}),
                "unknown_id",
                "write_refused",
                params=[PID, _path("did")],
            )
        },
        "/api/projects/{pid}/personas/{visitor_id}": {
            "get": _read(
                "getPersona",
                "what the project knows of a visitor (the page pipeline keeps it)",
                _ok("it", _ref("Persona")),
                PID,
                _path("visitor_id"),
            )
        },
        "/api/projects/{pid}/scenes": {
            "get": _read(
                "listScenes",
                "the project's scenes (the scenes pipeline edits them)",
                _ok("by position", _object({"scenes": _array("Scene")})),
                PID,
            )
        },
    }


def _generation_paths(body_limit: int) -> dict[str, Any]:
    submitted = _object(
        {
            "generation": _ref("Generation"),
            "user_message": _ref("Message"),
            "assistant_message": _ref("Message"),
            "stream_url": STRING,
            "created": {"type": "boolean"},
        }
    )
    accepted = {
        **_ok("accepted: the generation runs (or waits for a slot) in the background", submitted),
        "links": {
            "GetGeneration": _link("getGeneration", gid=NEW_GENERATION),
            "Cancel": _link("cancelGeneration", gid=NEW_GENERATION),
            "Stream": _link("streamGeneration", gid=NEW_GENERATION),
            "ListFiles": _link("listFiles", pid="$response.body#/generation/project_id"),
        },
    }
    submit = _op(
        "submitGeneration",
        "submit a prompt: 202 with ids, or its stream with Accept: text/event-stream",
        ("202", accepted),
        "bad_input",
        "unknown_id",
        "busy",
        "too_large",
        "write_refused",
        params=[PID],
        requestBody=_body("GenerationBody", required=True, limit=body_limit),
    )
    submit["responses"]["200"] = _stream_ok()
    return {
        "/api/projects/{pid}/generations": {"post": submit},
        "/api/generations/{gid}": {
            "get": _read("getGeneration", "one generation", _ok("it", _ref("Generation")), GID)
        },
        "/api/generations/{gid}/cancel": {
            "post": _op(
                "cancelGeneration",
                "cancel a generation (one that has ended is left as it is)",
                ("200", _ok("its state after the cancel", _ref("Generation"))),
                "unknown_id",
                "write_refused",
                params=[GID],
            )
        },
        "/api/generations/{gid}/stream": {
            "get": _stream("streamGeneration", "one generation's events as SSE, to its end", GID)
        },
    }


def _token_paths(body_limit: int) -> dict[str, Any]:
    minted = {
        **_ok("a scoped token (Cache-Control: no-store)", _ref("Token")),
        "headers": {"Cache-Control": {"schema": {"const": "no-store"}}},
    }
    mint = _op(
        "mintToken",
        "sign a scoped token (the master token only)",
        ("201", minted),
        "bad_input",
        "too_large",
        requestBody=_body("TokenBody", required=True, limit=body_limit),
    )
    mint["responses"]["409"] = _error(
        "this server holds no key to sign with (no_signing_key): the app signs its own"
    )
    cookie = (
        f"{COOKIE}: HttpOnly, SameSite=Strict, Path=/api/, Max-Age the token's remaining "
        "lifetime, Secure over TLS"
    )
    return {
        "/api/tokens": {"post": mint},
        "/api/session": {
            "post": {
                **_op(
                    "openSession",
                    "the scoped token of the Authorization header, as a session cookie",
                    ("204", {"description": f"Set-Cookie: {cookie}"}),
                ),
            },
            "delete": {
                **_op(
                    "closeSession",
                    "clear the session cookie",
                    ("204", {"description": f"Set-Cookie: {COOKIE} cleared"}),
                ),
                "security": [],
            },
        },
    }


def _service_paths() -> dict[str, Any]:
    counts = _object(
        {
            "total": {"type": "integer", "minimum": 0},
            "by_key": {"type": "object", "additionalProperties": {"type": "integer", "minimum": 1}},
        }
    )
    return {
        "/api/connections": {
            "get": _op("listConnections", "open streams, per key", ("200", _ok("counts", counts)))
        },
        "/api/openapi.json": {
            "get": _op("describe", "this description", ("200", _ok("it", {"type": "object"})))
        },
        "/api/pipelines": {
            "get": _op(
                "listPipelines",
                "the pipelines a submit may name: stages, event types, inputs schema",
                (
                    "200",
                    _ok(
                        "pipelines",
                        _object(
                            {
                                "default": STRING,
                                "pipelines": {"type": "array", "items": {"type": "object"}},
                            }
                        ),
                    ),
                ),
            )
        },
        "/healthz": {
            "get": {
                "operationId": "health",
                "summary": "liveness",
                "security": [],
                "responses": {
                    "200": _ok("serving", _object({"status": {"const": "ok"}, "pid": PROCESS_ID})),
                    "503": _ok(
                        "shutting down",
                        _object({"status": {"const": "stopping"}, "pid": PROCESS_ID}),
                    ),
                },
            }
        },
        "/metrics": {
            "get": {
                "operationId": "metrics",
                "summary": "Prometheus text metrics",
                "responses": {
                    "200": {
                        "description": "the text exposition format",
                        "content": {"text/plain": {"schema": STRING}},
                    }
                },
            }
        },
    }


def describe(
    settings: Settings, pipelines: Mapping[str, Mapping[str, Any]] | None = None
) -> dict[str, Any]:
    """The description of the API as this server runs it. The token, when one is set,
    guards every route but /healthz: as a bearer token, or as ?token= on the streams
    (EventSource cannot set headers); with none set, no route declares it."""
    body_limit = settings.server.max_body_bytes
    spec: dict[str, Any] = {
        "openapi": VERSION,
        "info": {
            "title": "genstream",
            "version": "0.1.0",
            "description": (
                'Every error is {"error": {"code", "message"}}. A body with a field it '
                "does not describe is refused with a 400 naming the field, and null is not "
                "a value of an optional field: leave the field out. A request HTTP cannot "
                "parse is a 400 malformed_request."
            ),
        },
        "components": {"schemas": _with_pipelines(_schemas(settings), settings, pipelines)},
        "paths": {
            **_project_paths(body_limit),
            **_generation_paths(body_limit),
            **_token_paths(body_limit),
            **_event_schema_paths(),
            **_knowledge_paths(body_limit),
            **_service_paths(),
        },
    }
    if settings.auth.enabled:
        _guard(spec, scoped=bool(settings.auth.jwt_secret or _key_files(settings)))
    return spec


def _key_files(settings: Settings) -> bool:
    return bool(settings.auth.jwt_public_key_file or settings.auth.jwt_private_key_file)


def _guard(spec: dict[str, Any], *, scoped: bool) -> None:
    """Declare the credentials, and their 401 and 403, on every route they guard: the
    master token or a scoped one as a bearer token, as ?token= on the streams
    (EventSource cannot set headers), as the session cookie (web/auth.py)."""
    schemes: dict[str, Schema] = {
        "bearer": {"type": "http", "scheme": "bearer"},
        "query_token": {
            "type": "apiKey",
            "in": "query",
            "name": QUERY_TOKEN,
            "description": "for EventSource, which cannot set headers: streams only",
        },
    }
    if scoped:
        schemes["cookie"] = {
            "type": "apiKey",
            "in": "cookie",
            "name": COOKIE,
            "description": f"from POST /api/session; a write needs the {CSRF_HEADER} header",
        }
    spec["components"]["securitySchemes"] = schemes
    spec["security"] = [{"bearer": []}]
    unauthorized = _error(
        "no token, or one that does not hold: expired, a bad signature, another algorithm "
        "than the server's, or a token in the query string of a route that is no stream "
        "(unauthorized)"
    )
    out_of_scope = _error(
        "a valid token that does not reach this: another project, no write right, a route "
        "for the master token only, or a cookie write without its header (forbidden, "
        "csrf_header_missing)"
    )
    for path, methods in spec["paths"].items():
        for method, op in methods.items():
            if op.get("security") == []:
                continue
            op["responses"]["401"] = unauthorized
            reach = POLICIES.get((method.upper(), path))
            if (
                reach is not None
                and (reach.reach is not Reach.ANY)
                and (scoped or _always_403(path))
            ):
                op["responses"]["403"] = out_of_scope
            if path.endswith("/stream"):
                op["security"] = [{"bearer": []}, {"query_token": []}]
            if scoped:
                op["security"] = [*op.get("security", spec["security"]), {"cookie": []}]


def _always_403(path: str) -> bool:
    # The master token is never put in a cookie: 403 even where it is the only credential.
    return path == "/api/session"
