"""HTTP handlers: parse and validate, call one function, shape the reply."""

from __future__ import annotations

import os
import re
from typing import Any, Final

import orjson
from aiohttp import hdrs, web

from service.auth import Forbidden, Right, Unauthenticated, scope_of, valid_subject
from service.errors import NotFound
from service.eventlog import app_events
from service.eventlog.event import now_ms
from service.eventlog.journal import Emit
from service.generation.lifecycle import new_id
from service.storage.interface import DocumentRow, GenerationRow, ProjectRow, Tx
from service.web import archive, auth, views
from service.web.context import SCHEMAS, SERVICES, Services
from service.web.errors import ApiError, bad_request
from service.web.params import MAX_INTEGER, non_negative_int
from service.web.streams import StreamTarget, parse_cursor, stream

MAX_NAME_CHARS: Final = 200
MAX_REQUEST_ID_CHARS: Final = 200
MAX_URL_CHARS: Final = 4096
DEFAULT_EVENTS_LIMIT: Final = 100
MAX_EVENTS_LIMIT: Final = 1000
WEB_URL_SCHEMES: Final = ("http://", "https://")
DATA_IMAGE_PREFIX: Final = "data:image/"
# The fields each body may hold: any other is refused, naming it, because a misspelt
# optional field (`pipline`, `image_url`) ignored in silence is a request that did not do
# what its sender meant. The description says so (additionalProperties: false).
PROJECT_FIELDS: Final = frozenset({"name", "pipeline"})
PROJECT_PATCH_FIELDS: Final = frozenset({"pipeline"})
GENERATION_FIELDS: Final = frozenset(
    {"prompt", "image_urls", "client_request_id", "pipeline", "inputs"}
)
# A pipeline's name as a submit may give it (pipeline.NAME: at most 40 characters).
MAX_PIPELINE_CHARS: Final = 40
TOKEN_FIELDS: Final = frozenset({"projects", "project_prefix", "rights", "expires_in", "subject"})
APP_EVENT_FIELDS: Final = ("type", "data")
# White space, spelt out: a text field that holds nothing else is refused, and
# service/web/openapi.py puts the same characters in the description's pattern. `\s` would
# not do: Python's (str.isspace, which strip() uses) and ECMA-262's, which JSON Schema
# patterns follow, differ (U+001C-U+001F, U+0085 and U+FEFF).
SPACES: Final = (
    "\t\n\x0b\x0c\r\x1c\x1d\x1e\x1f \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005"
    "\u2006\u2007\u2008\u2009\u200a\u2028\u2029\u202f\u205f\u3000"
)
NOT_BLANK: Final = f"[^{SPACES}]"
_NOT_BLANK: Final = re.compile(NOT_BLANK)
# What the description says of a text field as one pattern: something besides white
# space, and no U+0000 anywhere (refused by `_text`: PostgreSQL's text cannot hold it).
TEXT_PATTERN: Final = f"^[^\\x00]*[^{SPACES}\\x00][^\\x00]*$"

# A knowledge base's documents: a title as long as a project's name; the content's cap
# is a setting (storage.max_document_chars). A search's query and its number of hits.
DOCUMENT_FIELDS: Final = frozenset({"title", "content"})
MAX_TITLE_CHARS: Final = 200
MAX_SEARCH_CHARS: Final = 1000
DEFAULT_SEARCH_LIMIT: Final = 10
MAX_SEARCH_LIMIT: Final = 100

routes = web.RouteTableDef()


def json_response(body: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(body), status=status, content_type="application/json")


def _services(request: web.Request) -> Services:
    return request.app[SERVICES]


async def _json_body(request: web.Request, fields: frozenset[str]) -> dict[str, Any]:
    raw = await request.read()
    if not raw:
        return {}
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise bad_request("body", f"not valid JSON ({exc})") from exc
    if not isinstance(body, dict):
        raise bad_request("body", "must be a JSON object")
    unknown = sorted(set(body) - fields)
    if unknown:
        known = ", ".join(sorted(fields))
        raise bad_request(unknown[0][:100], f"is not a field of this body (its fields: {known})")
    return body


def _text(value: Any, field: str, limit: int) -> str:
    """A string with something besides white space, at most `limit` characters."""
    if not isinstance(value, str):
        raise bad_request(field, "must be a string")
    if not _NOT_BLANK.search(value):
        raise bad_request(field, "must not be empty or only white space")
    if len(value) > limit:
        raise bad_request(field, f"must be at most {limit} characters")
    if "\x00" in value:
        # PostgreSQL's text cannot hold it (docs, 8.3 Character Types): refused on both
        # backends, so a request means the same on either.
        raise bad_request(field, "must not contain U+0000 (NUL)")
    return value


def _optional_text(body: dict[str, Any], field: str, limit: int) -> str | None:
    # Absent is absent; null is a value of the wrong type (the description has no null).
    return _text(body[field], field, limit) if field in body else None


def _query_int(request: web.Request, name: str, default: int, maximum: int = MAX_INTEGER) -> int:
    raw = request.query.get(name)
    if raw is None:
        return default
    return non_negative_int(raw, name, maximum)


async def _require_project(services: Services, project_id: str) -> None:
    """A 404 unless the project exists (one remembered lookup, not the project's view)."""
    if not await services.storage.project_exists(project_id):
        raise NotFound("project", project_id)


async def _project_or_404(services: Services, project_id: str) -> ProjectRow:
    project = await services.storage.project(project_id)
    if project is None:
        raise NotFound("project", project_id)
    return project


async def _generation_or_404(services: Services, generation_id: str) -> GenerationRow:
    generation = await services.storage.generation(generation_id)
    if generation is None:
        raise NotFound("generation", generation_id)
    return generation


def _wants_stream(request: web.Request) -> bool:
    return "text/event-stream" in request.headers.get(hdrs.ACCEPT, "")


# -- projects --------------------------------------------------------------------------


@routes.post("/api/projects")
async def create_project(request: web.Request) -> web.Response:
    services = _services(request)
    body = await _json_body(request, PROJECT_FIELDS)
    name = _optional_text(body, "name", MAX_NAME_CHARS) or "Untitled project"
    pipeline = _pipeline_name(services, body, nullable=False)
    project_id = new_id("prj")

    async def insert(tx: Tx, emit: Emit) -> None:
        await tx.insert_project(project_id, name.strip(), now_ms(), pipeline=pipeline)

    await services.journal.transact(insert)
    return json_response(views.project(await _project_or_404(services, project_id)), status=201)


@routes.get("/api/projects")
async def list_projects(request: web.Request) -> web.Response:
    reach = auth.grant(request)  # a scoped token sees the projects in its scope only
    projects = await _services(request).storage.projects()
    return json_response({"projects": [views.project(p) for p in projects if reach.covers(p.id)]})


@routes.get("/api/projects/{pid}")
async def get_project(request: web.Request) -> web.Response:
    project = await _project_or_404(_services(request), request.match_info["pid"])
    return json_response(views.project(project))


@routes.patch("/api/projects/{pid}")
async def update_project(request: web.Request) -> web.Response:
    """Set the project's default pipeline (`pipeline`: a name, or null to clear it)."""
    services = _services(request)
    project_id = request.match_info["pid"]
    body = await _json_body(request, PROJECT_PATCH_FIELDS)
    if "pipeline" not in body:
        raise bad_request("pipeline", "is required: a pipeline's name, or null to clear it")
    pipeline = _pipeline_name(services, body, nullable=True)

    async def update(tx: Tx, emit: Emit) -> None:
        if not await tx.project_exists(project_id):
            raise NotFound("project", project_id)
        await tx.set_project_pipeline(project_id, pipeline)

    await services.journal.transact(update)
    return json_response(views.project(await _project_or_404(services, project_id)))


def _pipeline_name(services: Services, body: dict[str, Any], *, nullable: bool) -> str | None:
    """A project's default pipeline from `body`: one this server runs (a 400 otherwise)."""
    if "pipeline" not in body or (nullable and body["pipeline"] is None):
        return None
    name = _text(body["pipeline"], "pipeline", MAX_PIPELINE_CHARS)
    return services.generations.pipeline(name).name


@routes.get("/api/projects/{pid}/messages")
async def list_messages(request: web.Request) -> web.Response:
    services = _services(request)
    project_id = request.match_info["pid"]
    await _require_project(services, project_id)
    messages = await services.storage.messages(project_id)
    return json_response({"messages": [views.message(m) for m in messages]})


@routes.get("/api/projects/{pid}/files")
async def list_files(request: web.Request) -> web.Response:
    services = _services(request)
    project_id = request.match_info["pid"]
    await _require_project(services, project_id)
    files = await services.storage.files(project_id)
    return json_response({"files": [views.file_info(f) for f in files]})


@routes.get("/api/projects/{pid}/files/{path:.+}")
async def get_file(request: web.Request) -> web.Response:
    services = _services(request)
    project_id = request.match_info["pid"]
    path = request.match_info["path"]
    await _require_project(services, project_id)
    file = await services.storage.file(project_id, path)
    if file is None:
        raise ApiError(404, "not_found", f"project {project_id} has no file {path!r}")
    return json_response(views.file(file))


@routes.get("/api/projects/{pid}/archive")
async def get_archive(request: web.Request) -> web.StreamResponse:
    services = _services(request)
    project_id = request.match_info["pid"]
    await _require_project(services, project_id)
    return await archive.stream_archive(request, services.storage, project_id)


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


@routes.post("/api/projects/{pid}/events")
async def publish_event(request: web.Request) -> web.Response:
    """An app event (`app.<name>`) on the project's log: 201 with the stored event."""
    services = _services(request)
    body = await _json_body(request, frozenset(APP_EVENT_FIELDS))
    for field in APP_EVENT_FIELDS:
        if field not in body:
            raise bad_request(field, "is required")
    event = await app_events.publish(
        services.journal,
        request.app[SCHEMAS],
        request.match_info["pid"],
        body["type"],
        body["data"],
        max_data_bytes=services.settings.events.max_data_bytes,
    )
    # The stored JSON as it is: the same bytes as the event's SSE data and /events.
    return web.Response(body=event.data, status=201, content_type="application/json")


@routes.get("/api/events/schemas")
async def event_schemas(request: web.Request) -> web.Response:
    """Every event type's JSON Schema, one document (eventlog/schemas.py)."""
    return web.Response(body=request.app[SCHEMAS].document_json(), content_type="application/json")


@routes.get("/api/projects/{pid}/stream")
async def project_stream(request: web.Request) -> web.StreamResponse:
    services = _services(request)
    project_id = request.match_info["pid"]
    cursor = parse_cursor(request)
    await _require_project(services, project_id)
    return await stream(request, services, StreamTarget(project_id), cursor)


# -- generations -----------------------------------------------------------------------


@routes.get("/api/pipelines")
async def list_pipelines(request: web.Request) -> web.Response:
    pipelines = _services(request).generations.pipelines
    default = _services(request).settings.generation.pipeline
    return json_response(
        {
            "default": default,
            "pipelines": [views.pipeline(p) for _, p in sorted(pipelines.items())],
        }
    )


def _image_urls(body: dict[str, Any], limit: int) -> list[str]:
    if "image_urls" not in body:
        return []
    value = body["image_urls"]
    if not isinstance(value, list):
        raise bad_request("image_urls", "must be a list of URLs")
    if len(value) > limit:
        raise bad_request("image_urls", f"at most {limit} images per request")
    for index, url in enumerate(value):
        field = f"image_urls[{index}]"
        if not isinstance(url, str):
            raise bad_request(field, "must be a string")
        if url.startswith(DATA_IMAGE_PREFIX):
            continue  # an image inline: as long as the body allows
        if not url.startswith(WEB_URL_SCHEMES):
            raise bad_request(field, "must be an http(s) URL or a data:image/ URL")
        if len(url) > MAX_URL_CHARS:
            raise bad_request(field, f"must be at most {MAX_URL_CHARS} characters")
    return value


@routes.post("/api/projects/{pid}/generations")
async def create_generation(request: web.Request) -> web.StreamResponse:
    services = _services(request)
    limits = services.settings.generation
    project_id = request.match_info["pid"]
    body = await _json_body(request, GENERATION_FIELDS)
    if "prompt" not in body:
        raise bad_request("prompt", "is required: a non-empty string")
    prompt = _text(body["prompt"], "prompt", limits.max_prompt_chars)
    image_urls = _image_urls(body, limits.max_image_urls)
    request_id = _optional_text(body, "client_request_id", MAX_REQUEST_ID_CHARS)
    pipeline = _optional_text(body, "pipeline", MAX_PIPELINE_CHARS)
    inputs = body.get("inputs", {})
    if not isinstance(inputs, dict):
        raise bad_request("inputs", "must be an object (the pipeline's inputs)")
    submission = await services.generations.submit(
        project_id, prompt, image_urls, request_id, pipeline, inputs
    )
    generation = submission.generation
    if _wants_stream(request):
        target = StreamTarget(project_id, generation.id)
        return await stream(request, services, target, generation.first_event_id - 1)
    return json_response(
        {
            "generation": views.generation(generation),
            "user_message": views.message(submission.user_message),
            "assistant_message": views.message(submission.assistant_message),
            "stream_url": f"/api/generations/{generation.id}/stream",
            "created": submission.created,
        },
        status=202,
    )


@routes.get("/api/generations/{gid}")
async def get_generation(request: web.Request) -> web.Response:
    generation = await _generation_or_404(_services(request), request.match_info["gid"])
    return json_response(views.generation(generation))


@routes.post("/api/generations/{gid}/cancel")
async def cancel_generation(request: web.Request) -> web.Response:
    services = _services(request)
    generation_id = request.match_info["gid"]
    await _generation_or_404(services, generation_id)
    return json_response(views.generation(await services.generations.cancel(generation_id)))


@routes.get("/api/generations/{gid}/stream")
async def generation_stream(request: web.Request) -> web.StreamResponse:
    services = _services(request)
    cursor = parse_cursor(request)
    generation = await _generation_or_404(services, request.match_info["gid"])
    if cursor is None:
        cursor = generation.first_event_id - 1
    target = StreamTarget(generation.project_id, generation.id)
    return await stream(request, services, target, cursor)


# -- tokens ----------------------------------------------------------------------------


@routes.post("/api/tokens")
async def mint_token(request: web.Request) -> web.Response:
    """A scoped token, signed here for an app that has no JWT library (master only)."""
    tokens = request.app[auth.TOKENS]
    body = await _json_body(request, TOKEN_FIELDS)
    for field, value in body.items():
        if value is None:
            raise bad_request(field, "null is not a value: leave the field out")
    scope = scope_of({"rights": [Right.READ.value], **body}, bad_request)
    ttl = body.get("expires_in", tokens.settings.jwt_default_ttl_seconds)
    if isinstance(ttl, float) and ttl.is_integer():
        ttl = int(ttl)  # 60.0 is an integer to JSON Schema
    if not isinstance(ttl, int) or isinstance(ttl, bool) or ttl < 1:
        raise bad_request("expires_in", "must be a whole number of seconds, at least 1")
    if ttl > tokens.settings.jwt_max_ttl_seconds:
        limit = tokens.settings.jwt_max_ttl_seconds
        raise bad_request("expires_in", f"must be at most {limit} (auth.jwt_max_ttl_seconds)")
    subject = body.get("subject")
    if subject is not None and not valid_subject(subject):
        raise bad_request("subject", "must be printable ASCII, not blank, at most 200")
    minted = tokens.mint(scope, ttl, subject)
    response = json_response(
        {
            "token": minted.token,
            "token_type": "Bearer",
            "expires_at": minted.expires_at,
            "expires_in": ttl,
            "claims": minted.claims,
        },
        status=201,
    )
    response.headers[hdrs.CACHE_CONTROL] = "no-store"  # RFC 6749 5.1: never cached
    return response


@routes.post("/api/session")
async def open_session(request: web.Request) -> web.Response:
    """The scoped token of the Authorization header as an HttpOnly cookie, for an
    EventSource on the same origin with no token in its URL."""
    reach = auth.grant(request)
    scheme, _, token = request.headers.get(hdrs.AUTHORIZATION, "").partition(" ")
    if reach.master or reach.expires_at is None:
        raise Forbidden("the master token is for servers: it is never put in a cookie")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthenticated("send the scoped token as Authorization: Bearer <token>")
    response = web.Response(status=204)
    secure = request.secure or _services(request).settings.auth.cookie_secure
    max_age = max(0, reach.expires_at - int(now_ms() / 1000))
    auth.session_cookie(response, token.strip(), max_age, secure=secure)
    return response


@routes.delete("/api/session")
async def close_session(request: web.Request) -> web.Response:
    response = web.Response(status=204)
    auth.clear_session_cookie(response)
    return response


# -- the pipelines' state: a project's knowledge base, personas, scenes -----------------


@routes.post("/api/projects/{pid}/documents")
async def create_document(request: web.Request) -> web.Response:
    """A document of the project's knowledge base (the page pipeline searches it): 201."""
    services = _services(request)
    project_id = request.match_info["pid"]
    body = await _json_body(request, DOCUMENT_FIELDS)
    for field in sorted(DOCUMENT_FIELDS):
        if field not in body:
            raise bad_request(field, "is required: a non-empty string")
    title = _text(body["title"], "title", MAX_TITLE_CHARS).strip()
    content = _text(body["content"], "content", services.settings.storage.max_document_chars)
    await _require_project(services, project_id)
    document = DocumentRow(new_id("doc"), project_id, title, content, now_ms())

    async def insert(tx: Tx, emit: Emit) -> None:
        await tx.insert_document(document)

    await services.journal.transact(insert)
    return json_response(views.document(document), status=201)


@routes.get("/api/projects/{pid}/documents")
async def list_documents(request: web.Request) -> web.Response:
    services = _services(request)
    project_id = request.match_info["pid"]
    await _require_project(services, project_id)
    documents = await services.storage.documents(project_id)
    return json_response({"documents": [views.document(d) for d in documents]})


# Before the document's own path: `search` is not a document id.
@routes.get("/api/projects/{pid}/documents/search")
async def search_documents(request: web.Request) -> web.Response:
    """The project's documents holding any word of `q`, best first."""
    services = _services(request)
    project_id = request.match_info["pid"]
    query = request.query.get("q")
    if query is None:
        raise bad_request("q", "is required: the words to search for")
    if len(query) > MAX_SEARCH_CHARS:
        raise bad_request("q", f"must be at most {MAX_SEARCH_CHARS} characters")
    limit = _query_int(request, "limit", DEFAULT_SEARCH_LIMIT, MAX_SEARCH_LIMIT)
    if limit == 0:
        raise bad_request("limit", "must be at least 1")
    await _require_project(services, project_id)
    hits = await services.storage.search_documents(project_id, query, limit)
    return json_response({"results": [views.document_hit(hit) for hit in hits]})


# A document's id only (doc_...): /documents/search is another resource, and its Allow
# header names GET alone.
@routes.delete("/api/projects/{pid}/documents/{did:doc_[^/]+}")
async def delete_document(request: web.Request) -> web.Response:
    services = _services(request)
    project_id = request.match_info["pid"]
    document_id = request.match_info["did"]
    await _require_project(services, project_id)

    async def delete(tx: Tx, emit: Emit) -> bool:
        return await tx.delete_document(project_id, document_id)

    if not await services.journal.transact(delete):
        raise NotFound("document", document_id)
    return web.Response(status=204)


@routes.get("/api/projects/{pid}/personas/{visitor_id}")
async def get_persona(request: web.Request) -> web.Response:
    services = _services(request)
    project_id = request.match_info["pid"]
    visitor_id = request.match_info["visitor_id"]
    await _require_project(services, project_id)
    persona = await services.storage.persona(project_id, visitor_id)
    if persona is None:
        raise NotFound("persona", visitor_id)
    return json_response(views.persona(persona))


@routes.get("/api/projects/{pid}/scenes")
async def list_scenes(request: web.Request) -> web.Response:
    services = _services(request)
    project_id = request.match_info["pid"]
    await _require_project(services, project_id)
    scenes = await services.storage.scenes(project_id)
    return json_response({"scenes": [views.scene(scene) for scene in scenes]})


# -- service ---------------------------------------------------------------------------


@routes.get("/api/connections")
async def connections(request: web.Request) -> web.Response:
    return json_response(_services(request).connections.snapshot())


@routes.get("/healthz")
async def healthz(request: web.Request) -> web.Response:
    services = _services(request)
    status = "stopping" if services.journal.closing else "ok"
    # The pid tells a process from its siblings (serve --workers, several behind a proxy).
    body = {"status": status, "pid": os.getpid()}
    return json_response(body, status=503 if status == "stopping" else 200)
