"""Settings: config.toml holds every default; the environment overrides; errors name the key."""

from __future__ import annotations

import dataclasses
import re
import tomllib
from pathlib import Path

import pytest

from service import config
from service.config import ConfigError, Settings


def test_config_toml_lists_every_setting_with_its_default() -> None:
    raw = tomllib.loads(config.default_config_path().read_text())
    defaults = Settings()
    for section in dataclasses.fields(Settings):
        values = getattr(defaults, section.name)
        expected = {f.name: getattr(values, f.name) for f in dataclasses.fields(values)}
        assert raw[section.name] == expected, section.name


def test_environment_overrides_the_file() -> None:
    settings = config.load(
        environ={"GENSTREAM_SERVER_PORT": "9000", "GENSTREAM_OFFLINE_TOKENS_PER_SECOND": "0"}
    )
    assert settings.server.port == 9000
    assert settings.offline.tokens_per_second == 0.0
    assert settings.server.host == "127.0.0.1"


def test_another_file_with_config(tmp_path: Path) -> None:
    path = tmp_path / "other.toml"
    path.write_text('[stream]\nheartbeat_seconds = 2.5\n[generation]\nprovider = "offline"\n')
    settings = config.load(path, environ={})
    assert settings.stream.heartbeat_seconds == 2.5
    assert settings.stream.retry_ms == 3000


@pytest.mark.parametrize(
    ("text", "environ", "message"),
    [
        pytest.param("[nope]\n", {}, "unknown section [nope]", id="unknown-section"),
        pytest.param("[server]\nprot = 1\n", {}, "unknown setting server.prot", id="typo"),
        pytest.param('[server]\nport = "x"\n', {}, "server.port must be a int", id="bad-type"),
        pytest.param("", {"GENSTREAM_SERVER_PORT": "eighty"}, "server.port", id="bad-env"),
        pytest.param('[auth]\ntoken = "abc"\n', {}, "must come from the environment", id="secret"),
        pytest.param("[server\n", {}, "other.toml", id="not-toml"),
        pytest.param(
            "[stream]\nheartbeat_seconds = 0\n", {}, "greater than 0", id="zero-heartbeat"
        ),
        pytest.param("", {"GENSTREAM_STREAM_QUEUE_SIZE": "0"}, "queue_size", id="zero-queue"),
        pytest.param("[server]\nport = 70000\n", {}, "at most 65535", id="port-too-big"),
        pytest.param("[stream]\nretry_ms = -5\n", {}, "not be negative", id="negative"),
        pytest.param(
            '[generation]\nprovider = "magic"\n', {}, "one of offline, openai", id="provider"
        ),
    ],
)
def test_bad_settings_are_refused_by_name(
    tmp_path: Path, text: str, environ: dict[str, str], message: str
) -> None:
    path = tmp_path / "other.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        config.load(path, environ=environ)


def test_token_comes_from_the_environment() -> None:
    settings = config.load(environ={"GENSTREAM_AUTH_TOKEN": "t0k"})
    assert settings.auth.token == "t0k"


# -- [storage] backend and url: the password from the environment only -------------------


def test_storage_url_comes_from_the_file_or_the_environment(tmp_path: Path) -> None:
    path = tmp_path / "pg.toml"
    path.write_text('[storage]\nbackend = "postgres"\nurl = "postgresql://gs@db.internal/gs"\n')
    settings = config.load(path, environ={})
    assert settings.storage.backend == "postgres"
    assert settings.storage.url == "postgresql://gs@db.internal/gs"
    # GENSTREAM_STORAGE_URL wins, and may carry the password.
    secret = "postgresql://gs:s3cret@db.internal:5433/gs"
    settings = config.load(path, environ={"GENSTREAM_STORAGE_URL": secret})
    assert settings.storage.url == secret
    assert Settings().storage.backend == "sqlite" and Settings().storage.url == ""


@pytest.mark.parametrize(
    "url",
    [
        pytest.param("postgresql://gs:s3cret@db.internal/gs", id="in-the-user-part"),
        pytest.param("postgresql://gs@db.internal/gs?password=s3cret", id="as-a-parameter"),
    ],
)
def test_a_password_in_the_files_storage_url_is_refused(tmp_path: Path, url: str) -> None:
    path = tmp_path / "pg.toml"
    path.write_text(f'[storage]\nbackend = "postgres"\nurl = "{url}"\n')
    with pytest.raises(ConfigError) as caught:
        config.load(path, environ={})
    message = str(caught.value)
    assert "storage.url must not hold a password" in message
    assert "GENSTREAM_STORAGE_URL" in message and "PGPASSWORD" in message
    assert "s3cret" not in message


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        pytest.param(
            {"GENSTREAM_STORAGE_BACKEND": "mysql"}, "one of sqlite, postgres", id="backend"
        ),
        pytest.param(
            {"GENSTREAM_STORAGE_URL": "mysql://gs:s3cret@db/gs"},
            "storage.url must start with postgresql://, got 'mysql://gs:***@db/gs'",
            id="not-a-postgres-url",
        ),
        pytest.param({"GENSTREAM_STORAGE_POOL_SIZE": "0"}, "pool_size", id="zero-pool"),
        pytest.param({"GENSTREAM_STORAGE_POLL_SECONDS": "0"}, "poll_seconds", id="zero-poll"),
        pytest.param({"GENSTREAM_GENERATION_LEASE_SECONDS": "0"}, "lease_seconds", id="zero-lease"),
    ],
)
def test_bad_storage_settings_are_refused(environ: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)) as caught:
        config.load(environ=environ)
    assert "s3cret" not in str(caught.value)


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("postgresql://gs:s3cret@db:5432/gs", "postgresql://gs:***@db:5432/gs"),
        ("postgresql://gs@db/gs", "postgresql://gs@db/gs"),
        ("postgresql://db/gs", "postgresql://db/gs"),
    ],
)
def test_a_url_is_shown_without_its_password(url: str, shown: str) -> None:
    assert config.redacted(url) == shown
