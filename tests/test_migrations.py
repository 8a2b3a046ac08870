"""A database written before a migration opens on this code: migrated in place, its old
rows read as the new columns' defaults say (issue 14: pipelines, on both backends).

Each test builds the older schema from the backend's own MIGRATIONS, writes rows with
that version's columns in raw SQL (what an older genstream left), then opens the backend."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Final

import asyncpg

from service.storage import postgres, sqlite
from service.storage.interface import Storage
from tests.postgres import Database

# The last schema version before pipelines, on each backend.
SQLITE_BEFORE_PIPELINES: Final = 1
POSTGRES_BEFORE_PIPELINES: Final = 2

_PROJECT: Final = "INSERT INTO projects (id, name, created_at) VALUES ('prj_old', 'old', 1)"
_GENERATION: Final = (
    "INSERT INTO generations (id, project_id, prompt, image_urls, status, provider, model, "
    "user_message_id, assistant_message_id, first_event_id, created_at) VALUES "
    "('gen_old', 'prj_old', 'a todo api', '[]', 'running', 'offline', 'offline', "
    "'msg_u', 'msg_a', 1, 1)"
)


async def _assert_migrated(storage: Storage) -> None:
    project = await storage.project("prj_old")
    assert project is not None and project.pipeline is None
    generation = await storage.generation("gen_old")
    assert generation is not None
    assert (generation.pipeline, generation.inputs, generation.prompt) == ("code", {}, "a todo api")
    assert project.active_generation == generation


async def test_an_sqlite_database_from_before_pipelines_migrates(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    with sqlite3.connect(path) as old:
        for migration in sqlite.MIGRATIONS[:SQLITE_BEFORE_PIPELINES]:
            old.executescript(migration)
        old.execute(_PROJECT)
        old.execute(_GENERATION)
        old.execute(f"PRAGMA user_version = {SQLITE_BEFORE_PIPELINES}")
    old.close()
    storage = await sqlite.Storage.open(str(path))
    try:
        await _assert_migrated(storage)
    finally:
        await storage.close()
    with sqlite3.connect(path) as again:
        assert again.execute("PRAGMA user_version").fetchone()[0] == sqlite.SCHEMA_VERSION
    again.close()


async def test_a_postgres_database_from_before_pipelines_migrates(pg_database: Database) -> None:
    old = await asyncpg.connect(pg_database.url)
    try:
        await old.execute("CREATE TABLE genstream_schema (version integer NOT NULL)")
        for migration in postgres.MIGRATIONS[:POSTGRES_BEFORE_PIPELINES]:
            await old.execute(migration)
        await old.execute("INSERT INTO genstream_schema VALUES ($1)", POSTGRES_BEFORE_PIPELINES)
        await old.execute(_PROJECT)
        await old.execute(_GENERATION)
    finally:
        await old.close()
    storage = await postgres.PostgresStorage.open(pg_database.url)
    try:
        await _assert_migrated(storage)
    finally:
        await storage.close()
    again = await asyncpg.connect(pg_database.url)
    try:
        version = await again.fetchval("SELECT version FROM genstream_schema")
        assert version == postgres.SCHEMA_VERSION
    finally:
        await again.close()
