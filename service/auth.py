"""Who may do what: the master token, and scoped tokens (JWTs) an app hands to a browser.

A scoped token is a JWT whose claims say which projects it reaches and with which rights
(README "Scoped tokens"):

    {"aud": "genstream", "exp": 1767225600, "sub": "user-42",
     "genstream": {"projects": ["prj_1"], "project_prefix": "prj_team7_",
                   "rights": ["read", "write"]}}

It is checked with PyJWT against the one key and the one algorithm of the settings
(HS256 with a secret, or EdDSA / RS256 with a public key): a token naming any other
algorithm, `none` included, is refused before its signature is looked at (RFC 8725 3.1).
No HTTP here: refusals are domain errors (Unauthenticated, Forbidden); the web layer
(service/web/auth.py) gives them their statuses and decides which right a route needs.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any, Final

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from service.config import AuthSettings, ConfigError
from service.errors import Conflict, DomainError

CLAIM: Final = "genstream"
# HS256 needs a key as long as its hash (RFC 7518 3.2): shorter ones are guessable.
MIN_SECRET_BYTES: Final = 32
MIN_RSA_BITS: Final = 2048
# A JWT longer than this is refused unread (aiohttp already caps a header at 8 KiB).
MAX_TOKEN_CHARS: Final = 4096
MAX_PROJECTS: Final = 100
MAX_ID_CHARS: Final = 200
MAX_SUBJECT_CHARS: Final = 200
# A project id or prefix in a claim, and a subject: short, inert text for URLs and logs
# (the description's patterns are these, service/web/openapi.py).
ID_PATTERN: Final = r"[A-Za-z0-9_.:-]+"
SUBJECT_PATTERN: Final = r"[ -~]*[!-~][ -~]*"  # printable ASCII, not only spaces
_ID: Final = re.compile(ID_PATTERN)
_SUBJECT: Final = re.compile(SUBJECT_PATTERN)

# How a check of claims refuses: (field, message) -> the error to raise.
Refuse = Callable[[str, str], Exception]


class Right(StrEnum):
    READ = "read"  # streams, /events, messages, files, the project and its generations
    WRITE = "write"  # submit and cancel generations
    PUBLISH = "publish"  # app events: POST /api/projects/{pid}/events (neither implies it)


class Unauthenticated(DomainError):
    """No credential, or one that does not hold: expired, forged, another algorithm."""

    def __init__(self, message: str) -> None:
        super().__init__("unauthorized", message)


class Forbidden(DomainError):
    """A credential that holds, for something outside what it grants."""

    def __init__(self, message: str, code: str = "forbidden") -> None:
        super().__init__(code, message)


@dataclass(frozen=True, slots=True)
class Grant:
    """What one request may do: everything (the master token, or no auth configured),
    or what a scoped token's claims say."""

    master: bool
    projects: frozenset[str] = frozenset()
    project_prefix: str | None = None
    rights: frozenset[Right] = frozenset()
    subject: str | None = None
    expires_at: int | None = None  # Unix seconds

    def covers(self, project_id: str) -> bool:
        if self.master:
            return True
        if project_id in self.projects:
            return True
        return self.project_prefix is not None and project_id.startswith(self.project_prefix)

    def check(self, project_id: str, right: Right) -> None:
        """Forbidden unless this grant holds `right` on the project."""
        if self.master:
            return
        if not self.covers(project_id):
            raise Forbidden(f"this token does not reach project {project_id!r}")
        if right not in self.rights:
            raise Forbidden(f"this token may not {right.value} (its rights: {self._said()})")

    def check_master(self, what: str) -> None:
        if not self.master:
            raise Forbidden(f"{what} needs the master token")

    def _said(self) -> str:
        return ", ".join(sorted(self.rights)) or "none"


MASTER: Final = Grant(master=True)
_RIGHTS: Final = frozenset(right.value for right in Right)


@dataclass(frozen=True, slots=True)
class Scope:
    """What a token to be minted grants, checked as a token's claims are."""

    projects: frozenset[str] = frozenset()
    project_prefix: str | None = None
    rights: frozenset[Right] = frozenset({Right.READ})

    def claim(self) -> dict[str, Any]:
        body: dict[str, Any] = {"rights": sorted(self.rights)}
        if self.projects:
            body["projects"] = sorted(self.projects)
        if self.project_prefix is not None:
            body["project_prefix"] = self.project_prefix
        return body


@dataclass(frozen=True, slots=True)
class Minted:
    token: str
    expires_at: int
    claims: dict[str, Any] = field(default_factory=dict)


class Tokens:
    """The keys scoped tokens are checked (and, when one is held, signed) with."""

    def __init__(self, settings: AuthSettings) -> None:
        self.settings = settings
        self.algorithm = settings.jwt_algorithm
        self._verify_key, self._signing_key = _keys(settings)

    @property
    def enabled(self) -> bool:
        return self._verify_key is not None

    @property
    def can_mint(self) -> bool:
        return self._signing_key is not None

    def verify(self, token: str) -> Grant:
        """The grant a scoped token carries; Unauthenticated when it does not hold."""
        if self._verify_key is None:
            raise Unauthenticated("the token is not valid")
        if len(token) > MAX_TOKEN_CHARS:
            raise Unauthenticated(f"the token is longer than {MAX_TOKEN_CHARS} characters")
        try:
            claims = jwt.decode(
                token,
                self._verify_key,
                algorithms=[self.algorithm],
                audience=self.settings.jwt_audience or None,
                leeway=self.settings.jwt_leeway_seconds,
                options={"require": ["exp", "aud"] if self.settings.jwt_audience else ["exp"]},
            )
        except jwt.ExpiredSignatureError as exc:
            raise Unauthenticated("the token has expired: fetch a fresh one") from exc
        except jwt.InvalidAlgorithmError as exc:
            raise Unauthenticated(f"the token is not signed with {self.algorithm}") from exc
        except jwt.InvalidSignatureError as exc:
            raise Unauthenticated("the token's signature does not verify") from exc
        except jwt.PyJWTError as exc:
            raise Unauthenticated(f"the token is not valid: {exc}") from exc
        return grant_of(claims)

    def mint(self, scope: Scope, ttl_seconds: int, subject: str | None = None) -> Minted:
        """A token for `scope`, valid `ttl_seconds` from now (at most jwt_max_ttl_seconds)."""
        if self._signing_key is None:
            raise Conflict(
                "no_signing_key",
                "this server holds no key to sign tokens with (auth.jwt_secret for HS256, "
                "auth.jwt_private_key_file for EdDSA and RS256): sign them in the app",
            )
        now = int(time.time())
        expires_at = now + min(ttl_seconds, self.settings.jwt_max_ttl_seconds)
        claims: dict[str, Any] = {"iat": now, "exp": expires_at, CLAIM: scope.claim()}
        if self.settings.jwt_audience:
            claims["aud"] = self.settings.jwt_audience
        if subject is not None:
            claims["sub"] = subject
        token = jwt.encode(claims, self._signing_key, algorithm=self.algorithm)
        return Minted(token, expires_at, claims)


def grant_of(claims: Mapping[str, Any]) -> Grant:
    """A verified token's claims as a grant; Unauthenticated if they are not well formed
    (a signed token that says nothing usable is as good as none)."""
    body = claims.get(CLAIM)
    if not isinstance(body, Mapping):
        raise Unauthenticated(f"the token has no {CLAIM!r} claim")
    scope = scope_of(body, lambda field, message: Unauthenticated(f"{field}: {message}"))
    subject = claims.get("sub")
    if subject is not None and not valid_subject(subject):
        raise Unauthenticated(f"sub: must be printable ASCII of at most {MAX_SUBJECT_CHARS}")
    return Grant(
        master=False,
        projects=scope.projects,
        project_prefix=scope.project_prefix,
        rights=scope.rights,
        subject=subject,
        expires_at=int(claims["exp"]),
    )


def scope_of(body: Mapping[str, Any], refuse: Refuse) -> Scope:
    """`projects`, `project_prefix` and `rights` checked; `refuse(field, message)` is
    raised for the first that is wrong (Unauthenticated for a token's claims, a 400 for
    the body of the mint route)."""
    projects = body.get("projects", [])
    prefix = body.get("project_prefix")
    rights = body.get("rights")
    if not isinstance(projects, list) or len(projects) > MAX_PROJECTS:
        raise refuse("projects", f"must be a list of at most {MAX_PROJECTS} project ids")
    if not all(_is_id(p) for p in projects):
        raise refuse("projects", f"each must be an id ({ID_PATTERN}, at most {MAX_ID_CHARS})")
    if prefix is not None and not _is_id(prefix):
        # Not empty: a prefix of "" would reach every project, which is the master's reach.
        raise refuse("project_prefix", f"must be {ID_PATTERN}, at most {MAX_ID_CHARS}")
    if not projects and prefix is None:
        raise refuse("projects", "a token must name its projects, or a project_prefix")
    if not isinstance(rights, list) or not rights or not all(_is_right(r) for r in rights):
        raise refuse("rights", f"must be a non-empty list of {', '.join(Right)}")
    return Scope(frozenset(projects), prefix, frozenset(Right(r) for r in rights))


def _is_right(value: Any) -> bool:
    return isinstance(value, str) and value in _RIGHTS


def _is_id(value: Any) -> bool:
    return isinstance(value, str) and len(value) <= MAX_ID_CHARS and bool(_ID.fullmatch(value))


def valid_subject(value: Any) -> bool:
    return (
        isinstance(value, str)
        and len(value) <= MAX_SUBJECT_CHARS
        and bool(_SUBJECT.fullmatch(value))
    )


# -- keys ------------------------------------------------------------------------------

_PUBLIC_TYPES: Final[dict[str, type]] = {
    "EdDSA": ed25519.Ed25519PublicKey,
    "RS256": rsa.RSAPublicKey,
}
_PRIVATE_TYPES: Final[dict[str, type]] = {
    "EdDSA": ed25519.Ed25519PrivateKey,
    "RS256": rsa.RSAPrivateKey,
}


def _keys(settings: AuthSettings) -> tuple[Any, Any]:
    """(the key tokens are verified with, the key they are signed with): None where the
    settings give none. ConfigError, naming the setting, for one that cannot be used."""
    algorithm = settings.jwt_algorithm
    if algorithm == "HS256":
        if settings.jwt_public_key_file or settings.jwt_private_key_file:
            raise ConfigError("auth.jwt_algorithm = HS256 takes auth.jwt_secret, not a key file")
        secret = settings.jwt_secret.encode()
        if not secret:
            return None, None
        if len(secret) < MIN_SECRET_BYTES:
            raise ConfigError(f"auth.jwt_secret must be at least {MIN_SECRET_BYTES} bytes")
        return secret, secret
    if settings.jwt_secret:
        raise ConfigError(f"auth.jwt_algorithm = {algorithm} takes key files, not jwt_secret")
    private = None
    if settings.jwt_private_key_file:
        private = _load(settings.jwt_private_key_file, "auth.jwt_private_key_file", private=True)
        _check_type(private, _PRIVATE_TYPES[algorithm], algorithm, "auth.jwt_private_key_file")
    public = None
    if settings.jwt_public_key_file:
        public = _load(settings.jwt_public_key_file, "auth.jwt_public_key_file", private=False)
        _check_type(public, _PUBLIC_TYPES[algorithm], algorithm, "auth.jwt_public_key_file")
    elif private is not None:
        public = private.public_key()
    return public, private


def _load(path: str, name: str, *, private: bool) -> Any:
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(f"{name}: cannot read {path}: {exc.strerror}") from exc
    try:
        if private:
            return serialization.load_pem_private_key(data, password=None)
        return serialization.load_pem_public_key(data)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"{name}: {path} is not a PEM key: {exc}") from exc


def _check_type(key: Any, kind: type, algorithm: str, name: str) -> None:
    if not isinstance(key, kind):
        raise ConfigError(f"{name}: not a key for {algorithm}")
    if isinstance(key, rsa.RSAPublicKey | rsa.RSAPrivateKey) and key.key_size < MIN_RSA_BITS:
        raise ConfigError(f"{name}: an RSA key needs at least {MIN_RSA_BITS} bits")
