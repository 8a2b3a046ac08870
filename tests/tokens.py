"""Scoped tokens as an app would sign them (PyJWT), and the ones an attacker would try."""

from __future__ import annotations

import base64
import time
from collections.abc import Sequence
from typing import Any, Final

import jwt
import orjson

MASTER: Final = "master-token-for-servers"
# 64 bytes: long enough for HS512 too (the wrong-algorithm case), so PyJWT does not warn.
SECRET: Final = "a-secret-for-hs256-of-sixty-four-bytes-" + "x" * 25
OTHER_SECRET: Final = "another-secret-of-sixty-four-bytes-long-" + "y" * 24
AUDIENCE: Final = "genstream"
TTL_SECONDS: Final = 300
# Settings for make_server: the master token and the HS256 secret.
AUTH: Final = {"token": MASTER, "jwt_secret": SECRET}


def claims(
    projects: Sequence[str] = (),
    rights: Sequence[str] = ("read",),
    *,
    prefix: str | None = None,
    subject: str | None = None,
    expires_in: float = TTL_SECONDS,
    **extra: Any,
) -> dict[str, Any]:
    scope: dict[str, Any] = {"rights": list(rights)}
    if projects:
        scope["projects"] = list(projects)
    if prefix is not None:
        scope["project_prefix"] = prefix
    body: dict[str, Any] = {
        "aud": AUDIENCE,
        "iat": int(time.time()),
        "exp": int(time.time() + expires_in),
        "genstream": scope,
        **extra,
    }
    if subject is not None:
        body["sub"] = subject
    return body


def sign(
    projects: Sequence[str] = (),
    rights: Sequence[str] = ("read",),
    *,
    key: Any = SECRET,
    algorithm: str = "HS256",
    **options: Any,
) -> str:
    return jwt.encode(claims(projects, rights, **options), key, algorithm=algorithm)


def _part(value: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(orjson.dumps(value)).rstrip(b"=").decode()


def unsigned(projects: Sequence[str], rights: Sequence[str] = ("read",)) -> str:
    """`alg: none`, no signature (RFC 7519 6.1): what a server must never take."""
    return f"{_part({'alg': 'none', 'typ': 'JWT'})}.{_part(claims(projects, rights))}."


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}
