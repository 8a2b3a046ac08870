"""Settings: dataclass defaults, then config.toml, then GENSTREAM_<SECTION>_<KEY>."""

from __future__ import annotations

import dataclasses
import os
import tomllib
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

ENV_PREFIX = "GENSTREAM_"
# Secrets are read from the environment only, so a committed config.toml cannot leak them.
SECRET_SETTINGS = frozenset({("auth", "token"), ("auth", "jwt_secret")})


class ConfigError(ValueError):
    """A setting that cannot be used, with the name of the setting."""


# Ranges and choices, checked wherever a setting is set (file, environment, replace()).
# A zero heartbeat or queue would not "disable" anything: it would spin or drop all.
POSITIVE: Final = frozenset(
    {
        "server.max_body_bytes",
        "storage.max_document_chars",
        "server.shutdown_grace_seconds",
        "server.workers",
        "storage.readers",
        "storage.pool_size",
        "storage.poll_seconds",
        "stream.heartbeat_seconds",
        "stream.queue_size",
        "stream.replay_page",
        "stream.max_streams",
        "stream.max_streams_per_project",
        "stream.send_timeout_seconds",
        "generation.max_concurrent",
        "generation.timeout_seconds",
        "generation.lease_seconds",
        "generation.max_prompt_chars",
        "generation.max_output_chars",
        "generation.max_files",
        "generation.max_file_bytes",
        "openai.max_tokens",
        "openai.request_timeout_seconds",
        "auth.jwt_default_ttl_seconds",
        "auth.jwt_max_ttl_seconds",
        "events.max_data_bytes",
    }
)
CHOICES: Final = {
    "storage.backend": ("sqlite", "postgres"),
    "generation.provider": ("offline", "openai", "auto"),
    "log.format": ("text", "json"),
    "log.level": ("debug", "info", "warning", "error"),
    "auth.jwt_algorithm": ("HS256", "EdDSA", "RS256"),
}
MAX_PORT: Final = 65535
# What libpq (and asyncpg) take as a connection URL.
POSTGRES_SCHEMES: Final = ("postgresql://", "postgres://")


@dataclass(frozen=True)
class ServerSettings:
    host: str = "127.0.0.1"
    port: int = 8080
    max_body_bytes: int = 1_048_576
    shutdown_grace_seconds: float = 10.0
    allow_remote_without_token: bool = False
    workers: int = 1  # processes on the port (web/workers.py); more than one needs postgres
    # --workers: how many dead workers the supervisor restarts within a minute before it
    # gives up, stops the others and exits 1; 0: a dead worker stops them all at once.
    worker_restarts: int = 5
    # Origins (scheme://host[:port]) of apps on other origins, separated by commas or
    # spaces; empty: no CORS headers at all (web/cors.py).
    cors_origins: str = ""


@dataclass(frozen=True)
class StorageSettings:
    backend: str = "sqlite"
    path: str = "data/genstream.db"
    # postgres: a libpq URL; its password only from the environment (see storage_url_error).
    url: str = ""
    pool_size: int = 10
    # postgres, several processes (eventlog/feed.py): each process reads the log at least
    # this often, so a notification that never arrived delays events by at most this.
    poll_seconds: float = 1.0
    # postgres: LISTEN for other processes' commits; false: the poll timer alone (behind a
    # pooler in transaction mode, such as PgBouncer's, which cannot hold a LISTEN).
    listen: bool = True
    busy_timeout_ms: int = 5000
    readers: int = 1
    retention_events_per_project: int = 100_000
    # One knowledge-base document's content, in characters (POST .../documents): more is a
    # 400. Its JSON, at 12 bytes a character at worst (an escaped surrogate pair), stays
    # within server.max_body_bytes, so the cap answers before the body's does.
    max_document_chars: int = 50_000
    retention_days: float = 0.0
    retention_interval_seconds: float = 600.0


@dataclass(frozen=True)
class StreamSettings:
    heartbeat_seconds: float = 15.0
    retry_ms: int = 3000
    queue_size: int = 1024
    replay_page: int = 500
    max_streams: int = 10_000
    max_streams_per_project: int = 1000
    send_timeout_seconds: float = 30.0


@dataclass(frozen=True)
class GenerationSettings:
    provider: str = "offline"
    max_concurrent: int = 4
    timeout_seconds: float = 600.0
    max_prompt_chars: int = 20_000
    max_image_urls: int = 8
    # What one generation may take from its model (generation.py): the first one crossed
    # ends it as output_too_large.
    max_output_chars: int = 1_000_000
    max_files: int = 1000
    max_file_bytes: int = 524_288
    # postgres (several processes): how long a process's claim on a generation it runs
    # outlives its last renewal (renewed every third of it); a process silent longer has
    # its generations ended as interrupted by the others (generation/leases.py).
    lease_seconds: float = 10.0
    # The pipeline a submit runs when it names none and its project has no default
    # (service/pipelines: code, page, scenes, and those of installed packages).
    pipeline: str = "code"


@dataclass(frozen=True)
class OfflineSettings:
    tokens_per_second: float = 60.0


@dataclass(frozen=True)
class OpenAISettings:
    model: str = "gpt-4o"
    base_url: str = ""
    temperature: float = 0.2
    max_tokens: int = 8192
    request_timeout_seconds: float = 120.0
    max_retries: int = 2
    retry_backoff_seconds: float = 0.5
    context_chars: int = 60_000


@dataclass(frozen=True)
class AuthSettings:
    token: str = ""  # the master token: every route, for the app's own server side
    # Scoped tokens (service/auth.py): JWTs signed with jwt_secret (HS256) or checked
    # against a public key (EdDSA, RS256), the one algorithm accepted.
    jwt_algorithm: str = "HS256"
    jwt_secret: str = ""
    jwt_public_key_file: str = ""
    jwt_private_key_file: str = ""  # lets POST /api/tokens sign with EdDSA or RS256
    jwt_audience: str = "genstream"
    jwt_default_ttl_seconds: int = 300
    jwt_max_ttl_seconds: int = 3600
    jwt_leeway_seconds: int = 5
    cookie_secure: bool = False  # Secure even when genstream sees plain HTTP (TLS at a proxy)

    @property
    def enabled(self) -> bool:
        """A credential is checked: the master token, scoped tokens, or both."""
        keys = (self.jwt_secret, self.jwt_public_key_file, self.jwt_private_key_file)
        return bool(self.token or any(keys))


@dataclass(frozen=True)
class EventsSettings:
    # App events (README "App events and typed events"): a JSON file mapping app.* types
    # to the JSON Schema of their `data`, or a directory of <type>.json files, one type's
    # schema each; empty: none declared (any object is taken).
    schemas: str = ""
    max_data_bytes: int = 65_536  # one app event's data as JSON; more is a 400


@dataclass(frozen=True)
class LogSettings:
    level: str = "info"
    format: str = "text"
    access: bool = True  # one line a request, tokens redacted (web/request_log.py)


@dataclass(frozen=True)
class Settings:
    server: ServerSettings = field(default_factory=ServerSettings)
    storage: StorageSettings = field(default_factory=StorageSettings)
    stream: StreamSettings = field(default_factory=StreamSettings)
    generation: GenerationSettings = field(default_factory=GenerationSettings)
    offline: OfflineSettings = field(default_factory=OfflineSettings)
    openai: OpenAISettings = field(default_factory=OpenAISettings)
    auth: AuthSettings = field(default_factory=AuthSettings)
    events: EventsSettings = field(default_factory=EventsSettings)
    log: LogSettings = field(default_factory=LogSettings)

    def replace(self, **sections: Mapping[str, Any]) -> Settings:
        """A copy with some keys changed: settings.replace(stream={"heartbeat_seconds": 1})."""
        return _build(self, {k: dict(v) for k, v in sections.items()}, "replace")


def default_config_path() -> Path:
    return Path(__file__).resolve().parent.parent / "config.toml"


def load(path: str | Path | None = None, environ: Mapping[str, str] | None = None) -> Settings:
    """Read the file (the repo's config.toml by default) and apply environment overrides."""
    environ = os.environ if environ is None else environ
    file = Path(path) if path is not None else default_config_path()
    settings = Settings()
    if path is not None or file.exists():
        try:
            raw = tomllib.loads(file.read_text(encoding="utf-8"))
        except OSError as exc:
            raise ConfigError(f"cannot read config file {file}: {exc.strerror}") from exc
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{file}: {exc}") from exc
        for section, key in SECRET_SETTINGS:
            if raw.get(section, {}).get(key):
                raise ConfigError(
                    f"{file}: {section}.{key} must come from the environment "
                    f"({ENV_PREFIX}{section.upper()}_{key.upper()}), not the file"
                )
        storage = raw.get("storage")
        password = storage_url_error(storage.get("url") if isinstance(storage, dict) else None)
        if password is not None:
            raise ConfigError(f"{file}: {password}")
        settings = _build(settings, raw, str(file))
    return _build(settings, _from_environ(environ), "environment")


def storage_url_error(url: object) -> str | None:
    """Why a storage.url may not stand in config.toml: it holds a password (in its user
    part or as ?password=). The password comes from the environment only, in
    GENSTREAM_STORAGE_URL or PGPASSWORD (which libpq and asyncpg read themselves)."""
    if not isinstance(url, str):
        return None
    parts = urllib.parse.urlsplit(url)
    in_query = "password" in urllib.parse.parse_qs(parts.query)
    if parts.password is None and not in_query:
        return None
    return (
        "storage.url must not hold a password: give the whole url in GENSTREAM_STORAGE_URL, "
        "or the password alone in PGPASSWORD"
    )


def redacted(url: str) -> str:
    """The url as it may be shown (an error, a log line): its password, if any, as ***."""
    parts = urllib.parse.urlsplit(url)
    if parts.password is None:
        return url
    host = parts.netloc.rpartition("@")[2]
    return urllib.parse.urlunsplit(parts._replace(netloc=f"{parts.username}:***@{host}"))


def _from_environ(environ: Mapping[str, str]) -> dict[str, dict[str, Any]]:
    sections: dict[str, dict[str, Any]] = {}
    for f in dataclasses.fields(Settings):
        prefix = f"{ENV_PREFIX}{f.name.upper()}_"
        for key, value in environ.items():
            if key.startswith(prefix):
                sections.setdefault(f.name, {})[key[len(prefix) :].lower()] = value
    return sections


def _build(base: Settings, raw: Mapping[str, Any], origin: str) -> Settings:
    changes: dict[str, Any] = {}
    section_fields = {f.name: f for f in dataclasses.fields(Settings)}
    for section, values in raw.items():
        if section not in section_fields:
            raise ConfigError(f"{origin}: unknown section [{section}]")
        if not isinstance(values, Mapping):
            raise ConfigError(f"{origin}: [{section}] must be a table")
        current = getattr(base, section)
        key_types = {f.name: type(getattr(current, f.name)) for f in dataclasses.fields(current)}
        updates: dict[str, Any] = {}
        for key, value in values.items():
            if key not in key_types:
                raise ConfigError(f"{origin}: unknown setting {section}.{key}")
            name = f"{section}.{key}"
            updates[key] = _check(_coerce(value, key_types[key], name, origin), name, origin)
        changes[section] = dataclasses.replace(current, **updates)
    return dataclasses.replace(base, **changes)


def _check(value: Any, name: str, origin: str) -> Any:
    if name in POSITIVE and value <= 0:
        raise ConfigError(f"{origin}: {name} must be greater than 0, got {value!r}")
    if isinstance(value, int | float) and not isinstance(value, bool) and value < 0:
        raise ConfigError(f"{origin}: {name} must not be negative, got {value!r}")
    if name == "server.port" and value > MAX_PORT:
        raise ConfigError(f"{origin}: server.port must be at most {MAX_PORT}, got {value!r}")
    if name == "storage.url" and value and not value.startswith(POSTGRES_SCHEMES):
        raise ConfigError(
            f"{origin}: storage.url must start with postgresql://, got {redacted(value)!r}"
        )
    choices = CHOICES.get(name)
    if choices is not None and value not in choices:
        raise ConfigError(f"{origin}: {name} must be one of {', '.join(choices)}, got {value!r}")
    return value


def _coerce(value: Any, kind: type, name: str, origin: str) -> Any:
    try:
        if kind is bool:
            if isinstance(value, bool):
                return value
            if isinstance(value, str) and value.lower() in ("1", "true", "yes", "on"):
                return True
            if isinstance(value, str) and value.lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError
        if kind is int and not isinstance(value, bool):
            return int(value)
        if kind is float and not isinstance(value, bool):
            return float(value)
        if kind is str and isinstance(value, str):
            return value
    except ValueError:
        pass
    raise ConfigError(f"{origin}: {name} must be a {kind.__name__}, got {value!r}")
