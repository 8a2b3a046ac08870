"""CORS for an app served from another origin (server.cors_origins; none by default).

Only the origins listed are answered, each echoed back, never `*`: a credentialed
request (`fetch(..., {credentials: "include"})`, `new EventSource(url, {withCredentials:
true})`) is refused by the browser unless Access-Control-Allow-Origin names its origin
and Access-Control-Allow-Credentials is true (Fetch standard, "CORS check"). A preflight
(OPTIONS with Access-Control-Request-Method) is answered before any credential is
looked at, since browsers send none with it; from an origin not listed it is a 403.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from typing import Final

from aiohttp import hdrs, web

from service.auth import Forbidden
from service.config import ConfigError
from service.logs import REQUEST_ID_HEADER
from service.web.auth import CSRF_HEADER, guarded

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

ALLOW_METHODS: Final = (hdrs.METH_GET, hdrs.METH_POST, hdrs.METH_DELETE)
ALLOW_HEADERS: Final = (
    hdrs.AUTHORIZATION,
    hdrs.CONTENT_TYPE,
    hdrs.LAST_EVENT_ID,
    REQUEST_ID_HEADER,
    CSRF_HEADER,
)
# What script on the other origin may read besides the CORS-safelisted headers.
EXPOSE_HEADERS: Final = (REQUEST_ID_HEADER, hdrs.RETRY_AFTER, hdrs.WWW_AUTHENTICATE)
# How long a browser may keep a preflight's answer (Chromium caps it at 7200).
MAX_AGE_SECONDS: Final = 600
# An origin is scheme://host[:port]: no path, no trailing slash (RFC 6454 6.1).
_ORIGIN: Final = re.compile(
    r"https?://[A-Za-z0-9.-]+(:[0-9]{1,5})?|https?://\[[0-9a-fA-F:.]+\](:[0-9]{1,5})?"
)


def parse_origins(raw: str) -> frozenset[str]:
    """server.cors_origins, separated by commas or spaces; ConfigError for one that is
    not an origin (`*` included: credentials need the origin named)."""
    origins = frozenset(part for part in re.split(r"[\s,]+", raw) if part)
    for origin in origins:
        if not _ORIGIN.fullmatch(origin):
            raise ConfigError(
                f"server.cors_origins: {origin!r} is not an origin "
                "(scheme://host[:port], no path; '*' is not allowed)"
            )
    return frozenset(origin.lower() for origin in origins)


class Cors:
    def __init__(self, origins: frozenset[str]) -> None:
        self.origins = origins

    def allowed(self, request: web.Request) -> str | None:
        origin = request.headers.get(hdrs.ORIGIN)
        if origin is None or origin.lower() not in self.origins:
            return None
        return origin

    @web.middleware
    async def preflight(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if not (
            request.method == hdrs.METH_OPTIONS
            and hdrs.ACCESS_CONTROL_REQUEST_METHOD in request.headers
            and hdrs.ORIGIN in request.headers
            and guarded(request.path)
        ):
            return await handler(request)
        asked = request.headers[hdrs.ACCESS_CONTROL_REQUEST_METHOD]
        if self.allowed(request) is None:
            raise Forbidden("this origin is not in server.cors_origins", "origin_not_allowed")
        if asked not in ALLOW_METHODS:
            raise Forbidden(f"{asked} is not allowed across origins", "method_not_allowed")
        return web.Response(
            status=204,
            headers={
                hdrs.ACCESS_CONTROL_ALLOW_METHODS: ", ".join(ALLOW_METHODS),
                hdrs.ACCESS_CONTROL_ALLOW_HEADERS: ", ".join(ALLOW_HEADERS),
                hdrs.ACCESS_CONTROL_MAX_AGE: str(MAX_AGE_SECONDS),
            },
        )

    async def on_prepare(self, request: web.Request, response: web.StreamResponse) -> None:
        """on_response_prepare: every answer under /api/, errors and streams included."""
        if not request.path.startswith("/api/"):
            return
        # The answer depends on Origin: a cache must not give one origin's to another.
        response.headers.add(hdrs.VARY, hdrs.ORIGIN)
        origin = self.allowed(request)
        if origin is None:
            return
        response.headers[hdrs.ACCESS_CONTROL_ALLOW_ORIGIN] = origin
        response.headers[hdrs.ACCESS_CONTROL_ALLOW_CREDENTIALS] = "true"
        response.headers[hdrs.ACCESS_CONTROL_EXPOSE_HEADERS] = ", ".join(EXPOSE_HEADERS)
