"""The API described in OpenAPI 3.1, served at /api/openapi.json (the fuzz tests read it)."""

from __future__ import annotations

from typing import Any, Final

_ERROR: Final = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["code", "message"],
            "properties": {"code": {"type": "string"}, "message": {"type": "string"}},
        }
    },
}
_CURSOR_HEADER: Final = {
    "name": "Last-Event-ID",
    "in": "header",
    "required": False,
    "schema": {"type": "string", "pattern": "^[0-9]+$"},
}
_CURSOR_QUERY: Final = {
    "name": "last_event_id",
    "in": "query",
    "required": False,
    "schema": {"type": "integer", "minimum": 0},
}
_TOKEN_QUERY: Final = {
    "name": "token",
    "in": "query",
    "required": False,
    "description": "the API token, for EventSource, which cannot set headers",
    "schema": {"type": "string"},
}


def _path(name: str) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}


def _json(schema: dict[str, Any]) -> dict[str, Any]:
    return {"content": {"application/json": {"schema": schema}}}


def _op(summary: str, ok: str, *params: dict[str, Any], **extra: Any) -> dict[str, Any]:
    responses: dict[str, Any] = {
        ok: {"description": summary},
        "400": {"description": "bad input", **_json(_ERROR)},
        "401": {"description": "missing or wrong token", **_json(_ERROR)},
        "404": {"description": "unknown id", **_json(_ERROR)},
    }
    return {"summary": summary, "parameters": list(params), "responses": responses, **extra}


def _stream(summary: str, *params: dict[str, Any]) -> dict[str, Any]:
    op = _op(summary, "200", *params, _CURSOR_HEADER, _CURSOR_QUERY, _TOKEN_QUERY)
    op["responses"]["200"] = {
        "description": summary,
        "content": {"text/event-stream": {"schema": {"type": "string"}}},
    }
    op["responses"]["503"] = {"description": "too many open streams", **_json(_ERROR)}
    return op


_PROJECT_BODY: Final = {
    "type": "object",
    "properties": {"name": {"type": "string", "maxLength": 200}},
}
_GENERATION_BODY: Final = {
    "type": "object",
    "required": ["prompt"],
    "properties": {
        "prompt": {"type": "string", "minLength": 1},
        "image_urls": {"type": "array", "items": {"type": "string"}},
        "client_request_id": {"type": "string", "maxLength": 200},
    },
}

PID: Final = _path("pid")
GID: Final = _path("gid")

SPEC: Final[dict[str, Any]] = {
    "openapi": "3.1.0",
    "info": {"title": "genstream", "version": "0.1.0"},
    "components": {
        "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
    },
    "security": [{"bearer": []}],
    "paths": {
        "/api/projects": {
            "get": _op("list projects", "200"),
            "post": _op(
                "create a project", "201", requestBody={"required": False, **_json(_PROJECT_BODY)}
            ),
        },
        "/api/projects/{pid}": {"get": _op("one project", "200", PID)},
        "/api/projects/{pid}/messages": {"get": _op("the project's messages", "200", PID)},
        "/api/projects/{pid}/files": {"get": _op("the project's files", "200", PID)},
        "/api/projects/{pid}/files/{path}": {
            "get": _op("one file with its content", "200", PID, _path("path"))
        },
        "/api/projects/{pid}/events": {
            "get": _op(
                "the event log as JSON, for polling",
                "200",
                PID,
                {"name": "after", "in": "query", "schema": {"type": "integer", "minimum": 0}},
                {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 0}},
            )
        },
        "/api/projects/{pid}/stream": {"get": _stream("the project's events as SSE", PID)},
        "/api/projects/{pid}/generations": {
            "post": _op(
                "submit a prompt; 202 with ids, or the stream with Accept: text/event-stream",
                "202",
                PID,
                requestBody={"required": True, **_json(_GENERATION_BODY)},
            )
        },
        "/api/generations/{gid}": {"get": _op("one generation", "200", GID)},
        "/api/generations/{gid}/cancel": {"post": _op("cancel a generation", "200", GID)},
        "/api/generations/{gid}/stream": {"get": _stream("one generation's events as SSE", GID)},
        "/api/connections": {"get": _op("open streams, counted per key", "200")},
        "/api/openapi.json": {"get": _op("this description", "200")},
        "/healthz": {"get": {"summary": "liveness", "security": [], "responses": {"200": {}}}},
        "/metrics": {"get": {"summary": "Prometheus text metrics", "responses": {"200": {}}}},
    },
}
