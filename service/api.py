"""HTTP handlers: parse and validate, call one function, shape the reply."""

from __future__ import annotations

from typing import Any, Final

import orjson
from aiohttp import web

from service.context import SERVICES, Services
from service.errors import ApiError, bad_request, not_found
from service.events import now_ms
from service.generation import new_id
from service.journal import Emit
from service.params import MAX_INTEGER, non_negative_int
from service.storage import Tx
from service.streams import StreamTarget, parse_cursor, stream

MAX_NAME_CHARS: Final = 200
MAX_REQUEST_ID_CHARS: Final = 200
MAX_URL_CHARS: Final = 4096
DEFAULT_EVENTS_LIMIT: Final = 100
MAX_EVENTS_LIMIT: Final = 1000
IMAGE_URL_SCHEMES: Final = ("http://", "https://", "data:image/")

routes = web.RouteTableDef()


def json_response(body: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(body), status=status, content_type="application/json")


def _services(request: web.Request) -> Services:
    return request.app[SERVICES]


async def _json_body(request: web.Request) -> dict[str, Any]:
    raw = await request.read()
    if not raw:
        return {}
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise bad_request("body", f"not valid JSON ({exc})") from exc
    if not isinstance(body, dict):
        raise bad_request("body", "must be a JSON object")
    return body


def _optional_str(body: dict[str, Any], field: str, limit: int) -> str | None:
    value = body.get(field)
    if value is None:
        return None
    if not isinstance(value, str):
        raise bad_request(field, "must be a string")
    if not value.strip():
        raise bad_request(field, "must not be empty")
    if len(value) > limit:
        raise bad_request(field, f"must be at most {limit} characters")
    return value


def _query_int(request: web.Request, name: str, default: int, maximum: int = MAX_INTEGER) -> int:
    raw = request.query.get(name)
    if raw is None:
        return default
    return non_negative_int(raw, name, maximum)


async def _require_project(services: Services, project_id: str) -> None:
    """A 404 unless the project exists (one remembered lookup, not the project's view)."""
    if not await services.storage.project_exists(project_id):
        raise not_found("project", project_id)


async def _project_or_404(services: Services, project_id: str) -> dict[str, Any]:
    project = await services.storage.project(project_id)
    if project is None:
        raise not_found("project", project_id)
    return project


async def _generation_or_404(services: Services, generation_id: str) -> dict[str, Any]:
    generation = await services.storage.generation(generation_id)
    if generation is None:
        raise not_found("generation", generation_id)
    return generation


def _wants_stream(request: web.Request) -> bool:
    return "text/event-stream" in request.headers.get("Accept", "")


# -- projects --------------------------------------------------------------------------


@routes.post("/api/projects")
async def create_project(request: web.Request) -> web.Response:
    services = _services(request)
    body = await _json_body(request)
    name = _optional_str(body, "name", MAX_NAME_CHARS) or "Untitled project"
    project_id = new_id("prj")

    async def insert(tx: Tx, emit: Emit) -> None:
        await tx.insert_project(project_id, name.strip(), now_ms())

    await services.journal.transact(insert)
    return json_response(await _project_or_404(services, project_id), status=201)


@routes.get("/api/projects")
async def list_projects(request: web.Request) -> web.Response:
    return json_response({"projects": await _services(request).storage.projects()})


@routes.get("/api/projects/{pid}")
async def get_project(request: web.Request) -> web.Response:
    return json_response(await _project_or_404(_services(request), request.match_info["pid"]))


@routes.get("/api/projects/{pid}/messages")
async def list_messages(request: web.Request) -> web.Response:
    services = _services(request)
    project_id = request.match_info["pid"]
    await _require_project(services, project_id)
    return json_response({"messages": await services.storage.messages(project_id)})


@routes.get("/api/projects/{pid}/files")
async def list_files(request: web.Request) -> web.Response:
    services = _services(request)
    project_id = request.match_info["pid"]
    await _require_project(services, project_id)
    return json_response({"files": await services.storage.files(project_id)})


@routes.get("/api/projects/{pid}/files/{path:.+}")
async def get_file(request: web.Request) -> web.Response:
    services = _services(request)
    project_id = request.match_info["pid"]
    path = request.match_info["path"]
    await _require_project(services, project_id)
    file = await services.storage.file(project_id, path)
    if file is None:
        raise ApiError(404, "not_found", f"project {project_id} has no file {path!r}")
    return json_response(file)


@routes.get("/api/projects/{pid}/events")
async def list_events(request: web.Request) -> web.Response:
    services = _services(request)
    project_id = request.match_info["pid"]
    after = _query_int(request, "after", 0)
    limit = _query_int(request, "limit", DEFAULT_EVENTS_LIMIT, MAX_EVENTS_LIMIT)
    if limit == 0:
        raise bad_request("limit", "must be at least 1")
    await _require_project(services, project_id)
    events = await services.storage.events_after(project_id, after, limit + 1)
    has_more = len(events) > limit
    events = events[:limit]
    last = events[-1].id if events else after
    # Each event's stored JSON goes out as it is: the same bytes as its SSE data.
    body = b"".join(
        (
            b'{"events":[',
            b",".join(event.data for event in events),
            b'],"last_event_id":%d,"has_more":%s}' % (last, b"true" if has_more else b"false"),
        )
    )
    return web.Response(body=body, content_type="application/json")


@routes.get("/api/projects/{pid}/stream")
async def project_stream(request: web.Request) -> web.StreamResponse:
    services = _services(request)
    project_id = request.match_info["pid"]
    cursor = parse_cursor(request)
    await _require_project(services, project_id)
    return await stream(request, services, StreamTarget(project_id), cursor)


# -- generations -----------------------------------------------------------------------


def _image_urls(body: dict[str, Any], limit: int) -> list[str]:
    value = body.get("image_urls")
    if value is None:
        return []
    if not isinstance(value, list):
        raise bad_request("image_urls", "must be a list of URLs")
    if len(value) > limit:
        raise bad_request("image_urls", f"at most {limit} images per request")
    for index, url in enumerate(value):
        field = f"image_urls[{index}]"
        if not isinstance(url, str):
            raise bad_request(field, "must be a string")
        if len(url) > MAX_URL_CHARS and not url.startswith("data:image/"):
            raise bad_request(field, f"must be at most {MAX_URL_CHARS} characters")
        if not url.startswith(IMAGE_URL_SCHEMES):
            raise bad_request(field, "must be an http(s) URL or a data:image/ URL")
    return value


@routes.post("/api/projects/{pid}/generations")
async def create_generation(request: web.Request) -> web.StreamResponse:
    services = _services(request)
    limits = services.settings.generation
    project_id = request.match_info["pid"]
    body = await _json_body(request)
    prompt = body.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        raise bad_request("prompt", "is required: a non-empty string")
    if len(prompt) > limits.max_prompt_chars:
        raise bad_request("prompt", f"must be at most {limits.max_prompt_chars} characters")
    image_urls = _image_urls(body, limits.max_image_urls)
    request_id = _optional_str(body, "client_request_id", MAX_REQUEST_ID_CHARS)
    submission = await services.generations.submit(project_id, prompt, image_urls, request_id)
    generation = submission.generation
    if _wants_stream(request):
        target = StreamTarget(project_id, generation["id"])
        return await stream(request, services, target, generation["first_event_id"] - 1)
    return json_response(
        {
            "generation": generation,
            "user_message": submission.user_message,
            "assistant_message": submission.assistant_message,
            "stream_url": f"/api/generations/{generation['id']}/stream",
            "created": submission.created,
        },
        status=202,
    )


@routes.get("/api/generations/{gid}")
async def get_generation(request: web.Request) -> web.Response:
    return json_response(await _generation_or_404(_services(request), request.match_info["gid"]))


@routes.post("/api/generations/{gid}/cancel")
async def cancel_generation(request: web.Request) -> web.Response:
    services = _services(request)
    generation_id = request.match_info["gid"]
    await _generation_or_404(services, generation_id)
    return json_response(await services.generations.cancel(generation_id))


@routes.get("/api/generations/{gid}/stream")
async def generation_stream(request: web.Request) -> web.StreamResponse:
    services = _services(request)
    cursor = parse_cursor(request)
    generation = await _generation_or_404(services, request.match_info["gid"])
    if cursor is None:
        cursor = generation["first_event_id"] - 1
    target = StreamTarget(generation["project_id"], generation["id"])
    return await stream(request, services, target, cursor)


# -- service ---------------------------------------------------------------------------


@routes.get("/api/connections")
async def connections(request: web.Request) -> web.Response:
    return json_response(_services(request).connections.snapshot())


@routes.get("/healthz")
async def healthz(request: web.Request) -> web.Response:
    services = _services(request)
    status = "stopping" if services.journal.closing else "ok"
    return json_response({"status": status}, status=503 if status == "stopping" else 200)
