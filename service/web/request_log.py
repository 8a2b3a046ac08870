"""Each request named in the logs: its id (the caller's X-Request-ID when sane), its project
and generation, set as the context variables service/logs.py reads."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable

from aiohttp import web

from service import logs

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
REQUEST_ID = web.RequestKey("request_id", str)


@web.middleware
async def context_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Name the request (the caller's X-Request-ID when sane) and its project for logs."""
    given = request.headers.get(logs.REQUEST_ID_HEADER, "")
    rid = given if logs.SAFE_REQUEST_ID.fullmatch(given) else uuid.uuid4().hex
    request[REQUEST_ID] = rid
    # One connection serves its requests in one task: reset what this one set.
    tokens = [(logs.request_id, logs.request_id.set(rid))]
    for var, key in ((logs.project_id, "pid"), (logs.generation_id, "gid")):
        tokens.append((var, var.set(request.match_info.get(key))))
    try:
        return await handler(request)
    finally:
        for var, token in reversed(tokens):
            var.reset(token)


async def echo_request_id(request: web.Request, response: web.StreamResponse) -> None:
    """on_response_prepare: every reply, streams included, names its request."""
    rid = request.get(REQUEST_ID)
    if rid is not None:
        response.headers[logs.REQUEST_ID_HEADER] = rid
