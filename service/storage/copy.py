"""Moving off SQLite: an SQLite database copied into an empty PostgreSQL one, ids kept.

Every table the app reads (projects, messages, generations, files, stream_sessions, the
event log, documents, personas, scenes) is copied row for row, so a client's cursor (an
event id) means the same event on PostgreSQL as it did on SQLite, and `event_log_head`,
where PostgreSQL's next id comes from (postgres.py), is set to the copied maximum: the
first event written after the copy takes the id after it.

All or nothing: the target is checked empty and filled in one transaction, so a copy that
fails (a refused row, a lost connection, Ctrl-C) leaves it as it was. The tables are
locked first (EXCLUSIVE: reads go on, no other write), so a server started on the target
meanwhile cannot slip a row in between the check and the copy. Rows go by COPY
(asyncpg's copy_records_to_table, the binary COPY protocol), read from SQLite in batches
of BATCH_ROWS, so memory stays one batch whatever the size of the log.

The source is read in one read transaction (one WAL snapshot: a server still running on
it cannot make the copy see half a commit), opened read-only: the copy writes nothing
to it. Generations still running in it are copied as they are: the first server started
on the copy ends them as failed, `interrupted`, with their terminal events, as a restart
on SQLite would have (the copy says how many).
"""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import asyncpg

from service.config import redacted
from service.protocol import ACTIVE_STATUSES
from service.storage import common, sqlite
from service.storage.interface import StorageError
from service.storage.postgres import DRIVER_ERRORS, PostgresStorage

BATCH_ROWS: Final = 5000

Row = tuple[Any, ...]


def _json_text(value: bytes | str | None) -> str | None:
    # SQLite keeps JSON as a BLOB of UTF-8; asyncpg takes jsonb as text.
    return value.decode() if isinstance(value, bytes) else value


def _index(columns: str, name: str) -> int:
    return [column.strip() for column in columns.split(",")].index(name)


# Where the JSON columns and retryable are in a row of GENERATION_COLUMNS, found by
# name: a migration that adds a column moves no index here.
_GENERATION_JSON: Final = tuple(
    _index(common.GENERATION_COLUMNS, name) for name in ("image_urls", "usage", "timings", "inputs")
)
_RETRYABLE: Final = _index(common.GENERATION_COLUMNS, "retryable")


def _generation(row: Row) -> Row:
    values = list(row)
    for index in _GENERATION_JSON:
        values[index] = _json_text(values[index])
    if values[_RETRYABLE] is not None:  # SQLite's 0/1, PostgreSQL's boolean
        values[_RETRYABLE] = bool(values[_RETRYABLE])
    return tuple(values)


def _persona(row: Row) -> Row:
    project_id, visitor_id, pain_points, interests, *rest = row
    return (project_id, visitor_id, _json_text(pain_points), _json_text(interests), *rest)


def _event(row: Row) -> Row:
    data = row[5]
    return (*row[:5], data.encode() if isinstance(data, str) else bytes(data))


@dataclass(frozen=True)
class _Table:
    name: str
    columns: str
    # The order rows are copied in: messages by rowid, so that PostgreSQL's seq (their
    # order among messages of one millisecond) follows SQLite's.
    order: str
    convert: Callable[[Row], Row] | None = None


# Parents before children (messages, generations and files reference projects).
TABLES: Final = (
    _Table("projects", common.PROJECT_COLUMNS, "created_at, id"),
    _Table("generations", common.GENERATION_COLUMNS, "created_at, id", _generation),
    _Table("messages", common.MESSAGE_COLUMNS, "rowid"),
    _Table("files", "project_id, path, content, size, sha256, generation_id, updated_at", "rowid"),
    _Table("events", common.EVENT_COLUMNS, "id", _event),
    # In seq order: PostgreSQL's seq (their order within a millisecond) follows SQLite's.
    # Their words are PostgreSQL's to index: a generated column of the row.
    _Table("documents", common.DOCUMENT_COLUMNS, "seq"),
    _Table("personas", common.PERSONA_COLUMNS, "project_id, visitor_id", _persona),
    _Table("scenes", common.SCENE_COLUMNS, "project_id, position, id"),
    _Table(
        "stream_sessions",
        "id, key, project_id, generation_id, peer, user_agent, cursor, started_at, ended_at, "
        "last_event_id, events_sent, close_reason",
        "started_at, id",
    ),
)


class CopyRefused(StorageError):
    """The copy did not start: the target is not empty, or the source not a database of
    this version. Nothing was written."""


@dataclass
class Copied:
    rows: dict[str, int] = field(default_factory=dict)
    last_event_id: int = 0
    active_generations: int = 0


def _open_source(path: str) -> sqlite3.Connection:
    if not Path(path).is_file():
        raise CopyRefused(f"{path}: no such SQLite database")
    try:
        source = sqlite3.connect(f"file:{path}?mode=ro", uri=True, isolation_level=None)
        version = source.execute("PRAGMA user_version").fetchone()[0]
    except sqlite3.Error as exc:
        raise CopyRefused(f"{path}: cannot read it: {exc}") from exc
    if version != sqlite.SCHEMA_VERSION:
        source.close()
        raise CopyRefused(
            f"{path} is at schema version {version}, this genstream at "
            f"{sqlite.SCHEMA_VERSION}: start this genstream on it once (it migrates), then copy"
        )
    return source


async def _batches(
    source: sqlite3.Connection, table: _Table, counted: dict[str, int]
) -> AsyncIterator[Row]:
    rows = source.execute(f"SELECT {table.columns} FROM {table.name} ORDER BY {table.order}")
    counted[table.name] = 0
    while batch := rows.fetchmany(BATCH_ROWS):
        counted[table.name] += len(batch)
        for row in batch:
            yield table.convert(tuple(row)) if table.convert else tuple(row)


async def _refuse_unless_empty(conn: asyncpg.Connection, url: str) -> None:
    holding = [
        table.name
        for table in TABLES
        if await conn.fetchval(f"SELECT EXISTS (SELECT 1 FROM {table.name})")
    ]
    head = await conn.fetchval("SELECT last_event_id FROM event_log_head")
    if holding or head:
        what = ", ".join(holding) if holding else f"event_log_head at {head}"
        raise CopyRefused(
            f"{redacted(url)} is not empty ({what}): the copy goes only into a database "
            "genstream has not written to (nothing was written)"
        )


def _columns(table: _Table) -> list[str]:
    return [column.strip() for column in table.columns.split(",")]


async def copy_to_postgres(source_path: str, url: str) -> Copied:
    """Copy the SQLite database at `source_path` into the empty PostgreSQL database at
    `url` (migrated first to this genstream's schema); CopyRefused, or StorageError for
    a database failure, with the target left as it was."""
    source = _open_source(source_path)
    try:
        await (await PostgresStorage.open(url, pool_size=1)).close()  # migrates
        try:
            conn = await asyncpg.connect(url)
        except DRIVER_ERRORS as exc:
            raise StorageError(f"cannot connect to PostgreSQL at {redacted(url)}: {exc}") from exc
        try:
            return await _copy(source, conn, url)
        except DRIVER_ERRORS as exc:
            raise StorageError(f"copy to {redacted(url)} failed, nothing written: {exc}") from exc
        finally:
            await conn.close()
    finally:
        source.close()


async def _copy(source: sqlite3.Connection, conn: asyncpg.Connection, url: str) -> Copied:
    copied = Copied()
    # One snapshot of the source for the whole copy: a read transaction holds it.
    source.execute("BEGIN")
    async with conn.transaction():
        # EXCLUSIVE conflicts with every lock a write takes (ROW EXCLUSIVE) and lets reads
        # through; held to the end of the transaction (PostgreSQL 15 docs, 13.3.1
        # "Table-Level Locks", https://www.postgresql.org/docs/15/explicit-locking.html).
        names = ", ".join([*(table.name for table in TABLES), "event_log_head"])
        await conn.execute(f"LOCK TABLE {names} IN EXCLUSIVE MODE")
        await _refuse_unless_empty(conn, url)
        for table in TABLES:
            await conn.copy_records_to_table(
                table.name,
                records=_batches(source, table, copied.rows),
                columns=_columns(table),
            )
        last = source.execute("SELECT COALESCE(MAX(id), 0) FROM events").fetchone()[0]
        await conn.execute("UPDATE event_log_head SET last_event_id = $1", last)
        copied.last_event_id = last
    statuses = ", ".join("?" for _ in ACTIVE_STATUSES)
    copied.active_generations = source.execute(
        f"SELECT COUNT(*) FROM generations WHERE status IN ({statuses})", sorted(ACTIVE_STATUSES)
    ).fetchone()[0]
    source.execute("COMMIT")
    return copied


def describe(copied: Copied) -> str:
    """What the command prints: the rows copied, table by table, and what comes next."""
    counts = ", ".join(f"{copied.rows.get(table.name, 0)} {table.name}" for table in TABLES)
    text = f"copied {counts}; the next event id is {copied.last_event_id + 1}"
    if copied.active_generations:
        text += (
            f"\n{copied.active_generations} generation(s) were running in the SQLite file: "
            "the first genstream started on PostgreSQL ends them as failed, interrupted"
        )
    return text
