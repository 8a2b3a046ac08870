"""Every request's credential and what it may reach: the master token, or a scoped token
(service/auth.py) from the Authorization header, from `?token=` on a stream route
(EventSource cannot send headers) or from the session cookie.

Refusals are the core's Unauthenticated (401, with WWW-Authenticate) and Forbidden (403),
given their statuses where every domain error is (web/app.py). Each route says what it
needs in POLICIES; a route missing there needs the master token,
so a route added later is closed until someone says who may use it. A project's routes
check the project in the path; a generation's look up its project first.
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from enum import Enum
from typing import Final

from aiohttp import hdrs, web

from service import logs
from service.auth import MASTER, Forbidden, Grant, Right, Tokens, Unauthenticated
from service.web.context import SERVICES

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

GRANT: Final = web.RequestKey("grant", Grant)
TOKENS: Final = web.AppKey("tokens", Tokens)
QUERY_TOKEN: Final = "token"
COOKIE: Final = "genstream_session"
# A write through the cookie must carry this header. A page can set it only from script
# (fetch), and another origin only after a preflight this server allowed (web/cors.py):
# a form, a link or an <img> elsewhere cannot, so the cookie alone writes nothing (CSRF).
CSRF_HEADER: Final = "X-Genstream-CSRF"
SAFE_METHODS: Final = frozenset({hdrs.METH_GET, hdrs.METH_HEAD})


class Reach(Enum):
    OPEN = "open"  # no credential: clearing the session cookie
    ANY = "any"  # any valid credential (the description; the project list, filtered)
    MASTER = "master"
    PROJECT = "project"  # the {pid} of the path
    GENERATION = "generation"  # the project of the {gid} of the path
    SCOPED = "scoped"  # a scoped token, not the master (the session cookie)


@dataclass(frozen=True, slots=True)
class Need:
    reach: Reach
    right: Right = Right.READ


READ_PROJECT: Final = Need(Reach.PROJECT)
READ_GENERATION: Final = Need(Reach.GENERATION)
POLICIES: Final[dict[tuple[str, str], Need]] = {
    ("GET", "/api/openapi.json"): Need(Reach.ANY),
    ("GET", "/api/pipelines"): Need(Reach.ANY),
    ("GET", "/api/projects"): Need(Reach.ANY),
    ("POST", "/api/projects"): Need(Reach.MASTER),
    ("GET", "/api/projects/{pid}"): READ_PROJECT,
    ("PATCH", "/api/projects/{pid}"): Need(Reach.PROJECT, Right.WRITE),
    ("GET", "/api/projects/{pid}/messages"): READ_PROJECT,
    ("GET", "/api/projects/{pid}/files"): READ_PROJECT,
    ("GET", "/api/projects/{pid}/files/{path}"): READ_PROJECT,
    ("GET", "/api/projects/{pid}/archive"): READ_PROJECT,
    ("GET", "/api/projects/{pid}/events"): READ_PROJECT,
    ("GET", "/api/projects/{pid}/stream"): READ_PROJECT,
    ("POST", "/api/projects/{pid}/events"): Need(Reach.PROJECT, Right.PUBLISH),
    ("GET", "/api/events/schemas"): Need(Reach.ANY),
    ("POST", "/api/projects/{pid}/generations"): Need(Reach.PROJECT, Right.WRITE),
    ("POST", "/api/projects/{pid}/documents"): Need(Reach.PROJECT, Right.WRITE),
    ("GET", "/api/projects/{pid}/documents"): READ_PROJECT,
    ("GET", "/api/projects/{pid}/documents/search"): READ_PROJECT,
    ("DELETE", "/api/projects/{pid}/documents/{did}"): Need(Reach.PROJECT, Right.WRITE),
    ("GET", "/api/projects/{pid}/personas/{visitor_id}"): READ_PROJECT,
    ("GET", "/api/projects/{pid}/scenes"): READ_PROJECT,
    ("GET", "/api/generations/{gid}"): READ_GENERATION,
    ("GET", "/api/generations/{gid}/stream"): READ_GENERATION,
    ("POST", "/api/generations/{gid}/cancel"): Need(Reach.GENERATION, Right.WRITE),
    ("GET", "/api/connections"): Need(Reach.MASTER),
    ("GET", "/metrics"): Need(Reach.MASTER),
    ("POST", "/api/tokens"): Need(Reach.MASTER),
    ("POST", "/api/session"): Need(Reach.SCOPED),
    ("DELETE", "/api/session"): Need(Reach.OPEN),
}


def guarded(path: str) -> bool:
    return path.startswith("/api/") or path == "/metrics"


def route_of(request: web.Request) -> str | None:
    """The route's path as written (`/api/projects/{pid}`), None for no route (404, 405)."""
    resource = request.match_info.route.resource
    return None if resource is None else resource.canonical


def is_stream_route(request: web.Request) -> bool:
    route = route_of(request)
    return request.method == hdrs.METH_GET and route is not None and route.endswith("/stream")


def grant(request: web.Request) -> Grant:
    """The request's grant: MASTER when the server checks no credential at all."""
    found: Grant = request.get(GRANT, MASTER)
    return found


def auth_middleware(master: str, tokens: Tokens) -> Callable[..., Awaitable[web.StreamResponse]]:
    expected = master.encode()

    @web.middleware
    async def auth(request: web.Request, handler: Handler) -> web.StreamResponse:
        if not guarded(request.path):
            return await handler(request)
        route = route_of(request)
        method = hdrs.METH_GET if request.method == hdrs.METH_HEAD else request.method
        need = POLICIES.get((method, route), Need(Reach.MASTER)) if route else Need(Reach.ANY)
        if need.reach is Reach.OPEN:
            return await handler(request)
        given, from_cookie = _credential(request)
        if given is None:
            raise Unauthenticated("a valid token is required: Authorization: Bearer <token>")
        # Constant-time comparison: the time taken says nothing about the token.
        if expected and hmac.compare_digest(given.encode(), expected):
            if from_cookie:  # never put there by this server; refused as forged
                raise Unauthenticated("the session cookie is not valid")
            found = MASTER
        else:
            found = tokens.verify(given)
        unsafe = request.method not in SAFE_METHODS
        if from_cookie and unsafe and not request.headers.get(CSRF_HEADER):
            raise Forbidden(
                f"a write with the session cookie needs the {CSRF_HEADER} header",
                "csrf_header_missing",
            )
        await _authorize(request, found, need)
        request[GRANT] = found
        reset = logs.subject.set(found.subject)
        try:
            return await handler(request)
        finally:
            logs.subject.reset(reset)

    return auth


def _credential(request: web.Request) -> tuple[str | None, bool]:
    """The token presented, and whether it came from the cookie. A `?token=` anywhere but
    on a stream route is refused outright: it is in logs and histories already."""
    in_query = request.query.get(QUERY_TOKEN)
    if in_query is not None and not is_stream_route(request):
        raise Unauthenticated("a token in the URL is accepted only on stream routes")
    header = request.headers.get(hdrs.AUTHORIZATION, "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip(), False
    if in_query:
        return in_query, False
    cookie = request.cookies.get(COOKIE)
    if cookie:
        return cookie, True
    return None, False


async def _authorize(request: web.Request, found: Grant, need: Need) -> None:
    if need.reach is Reach.ANY:
        return
    if need.reach is Reach.MASTER:
        found.check_master(f"{request.method} {request.path}")
    elif need.reach is Reach.SCOPED:
        if found.master:
            raise Forbidden("the master token is for servers: it is never put in a cookie")
    elif need.reach is Reach.PROJECT:
        found.check(request.match_info["pid"], need.right)
    elif need.reach is Reach.GENERATION and not found.master:
        generation = await request.app[SERVICES].storage.generation(request.match_info["gid"])
        if generation is not None:  # an unknown id is the handler's 404
            found.check(generation.project_id, need.right)


def session_cookie(response: web.StreamResponse, token: str, max_age: int, *, secure: bool) -> None:
    """HttpOnly: no script reads it; SameSite=Strict: no other site's page sends it;
    Secure over TLS (or always, with auth.cookie_secure); only for /api/."""
    response.set_cookie(
        COOKIE,
        token,
        max_age=max_age,
        path="/api/",
        httponly=True,
        samesite="Strict",
        secure=secure,
    )


def clear_session_cookie(response: web.StreamResponse) -> None:
    response.del_cookie(COOKIE, path="/api/")
