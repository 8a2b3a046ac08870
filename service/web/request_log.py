"""Each request named in the logs: its id (the caller's X-Request-ID when sane), its project
and generation, set as the context variables service/logs.py reads; and the access log,
one line a request, its URL with any token redacted."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Awaitable, Callable
from typing import Final

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger

from service import logs
from service.web.auth import GRANT

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
REQUEST_ID = web.RequestKey("request_id", str)
ACCESS_LOG: Final = logging.getLogger("service.web.access")
MS_PER_SECOND: Final = 1000


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


class AccessLogger(AbstractAccessLogger):
    """`127.0.0.1 GET /api/projects/prj_1/stream?token=[redacted] 200 5120 B 812.4 ms
    request_id=... subject=user-42`: a stream's line is written when it ends. The URL is
    redacted here, whatever formats the record (service/logs.py redacts every line too)."""

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        grant = request.get(GRANT)
        subject = "" if grant is None or grant.subject is None else f" subject={grant.subject}"
        self.logger.info(
            "%s %s %s %d %d B %.1f ms request_id=%s%s",
            request.remote,
            request.method,
            logs.redact(request.path_qs),
            response.status,
            response.body_length,
            time * MS_PER_SECOND,
            request.get(REQUEST_ID, "-"),
            subject,
        )
