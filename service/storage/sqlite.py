"""SQLite storage: the schema, its migrations, and every SQL statement of the service.

One writer connection, and one on the loop's own thread for small batches of events
(_LoopWriter), driven only by the journal's writer loop (so transactions never
interleave), and a few reader connections for the HTTP reads and stream replays (WAL
lets them read while the writer commits). The rule a stream relies on: a read sees
every event published before it was issued (see `_Readers`).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import sqlite3
from collections import deque
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from dataclasses import astuple
from pathlib import Path
from typing import Any, Final

import aiosqlite
import orjson

from service.eventlog.event import Encoded, Event, from_row, now_ms
from service.files import FileRecord

# Tx is the interface's: callers type their transaction functions with it, whichever
# backend runs them (SqliteTx below is this backend's).
from service.storage.common import (
    ACTIVE,
    DOCUMENT_COLUMNS,
    EVENT_COLUMNS,
    GENERATION_COLUMNS,
    MESSAGE_COLUMNS,
    PERSONA_CHANGES,
    PERSONA_COLUMNS,
    PROJECT_COLUMNS,
    PROJECT_VIEW,
    SCENE_CHANGES,
    SCENE_COLUMNS,
    SNIPPET_WORDS,
    any_of_quoted,
    document_row,
    generation_row,
    persona_row,
    persona_values,
    project_row,
    scene_row,
    search_terms,
    translating,
)
from service.storage.interface import (
    DEFAULT_PIPELINE,
    DocumentHit,
    DocumentRow,
    FileInfo,
    FileRow,
    GenerationRow,
    MessageRow,
    PersonaRow,
    ProjectRow,
    SceneRow,
)
from service.storage.interface import StorageError as StorageError
from service.storage.interface import Tx as Tx

log = logging.getLogger(__name__)

# Each entry moves the schema one version up; PRAGMA user_version holds the version.
MIGRATIONS: Final[tuple[str, ...]] = (
    """
    CREATE TABLE projects (
        id TEXT PRIMARY KEY,
        name TEXT NOT NULL,
        created_at INTEGER NOT NULL
    );
    CREATE TABLE messages (
        id TEXT PRIMARY KEY,
        project_id TEXT NOT NULL REFERENCES projects(id),
        generation_id TEXT,
        role TEXT NOT NULL CHECK (role IN ('user', 'assistant')),
        status TEXT NOT NULL,
        content TEXT NOT NULL,
        created_at INTEGER NOT NULL,
        updated_at INTEGER NOT NULL
    );
    CREATE INDEX messages_by_project ON messages(project_id, created_at);
    CREATE TABLE generations (
        id TEXT PRIMARY KEY,
        project_id TEXT NOT NULL REFERENCES projects(id),
        client_request_id TEXT,
        prompt TEXT NOT NULL,
        image_urls BLOB NOT NULL,
        status TEXT NOT NULL,
        stage TEXT,
        progress INTEGER NOT NULL DEFAULT 0,
        error_code TEXT,
        error_message TEXT,
        retryable INTEGER,
        usage BLOB,
        timings BLOB,
        provider TEXT NOT NULL,
        model TEXT NOT NULL,
        user_message_id TEXT NOT NULL,
        assistant_message_id TEXT NOT NULL,
        first_event_id INTEGER,
        created_at INTEGER NOT NULL,
        started_at INTEGER,
        finished_at INTEGER,
        UNIQUE (project_id, client_request_id)
    );
    CREATE INDEX generations_by_status ON generations(status);
    CREATE TABLE events (
        id INTEGER PRIMARY KEY,
        project_id TEXT NOT NULL,
        generation_id TEXT,
        type TEXT NOT NULL,
        ts INTEGER NOT NULL,
        data BLOB NOT NULL
    );
    CREATE INDEX events_by_project ON events(project_id, id);
    CREATE INDEX events_by_generation ON events(generation_id, id);
    CREATE TABLE files (
        project_id TEXT NOT NULL REFERENCES projects(id),
        path TEXT NOT NULL,
        content TEXT NOT NULL,
        size INTEGER NOT NULL,
        sha256 TEXT NOT NULL,
        generation_id TEXT NOT NULL,
        updated_at INTEGER NOT NULL,
        PRIMARY KEY (project_id, path)
    );
    CREATE TABLE stream_sessions (
        id TEXT PRIMARY KEY,
        key TEXT NOT NULL,
        project_id TEXT NOT NULL,
        generation_id TEXT,
        peer TEXT,
        user_agent TEXT,
        cursor INTEGER,
        started_at INTEGER NOT NULL,
        ended_at INTEGER,
        last_event_id INTEGER,
        events_sent INTEGER NOT NULL DEFAULT 0,
        close_reason TEXT
    );
    """,
    # 2. Pipelines (issue 14): the pipeline that runs a generation and its inputs object;
    # a project's default pipeline (NULL: the config's). Every older generation was code's.
    """
    ALTER TABLE generations ADD COLUMN pipeline TEXT NOT NULL DEFAULT 'code';
    ALTER TABLE generations ADD COLUMN inputs BLOB NOT NULL DEFAULT '{}';
    ALTER TABLE projects ADD COLUMN pipeline TEXT;
    """,
    # 3. The pipelines' state (issue 14): a project's documents, searched through an FTS5
    # index of their title and content; what a project knows of each visitor; scenes.
    # documents_fts is an external-content table (https://www.sqlite.org/fts5.html,
    # 4.4.3): it stores only the index, reads the text from documents by rowid (seq), and
    # the triggers keep it in step, in the transaction of each write to documents. The
    # porter stemmer over unicode61: 'pricing' finds 'price', as PostgreSQL's english does.
    """
    CREATE TABLE documents (
        seq INTEGER PRIMARY KEY,
        id TEXT NOT NULL UNIQUE,
        project_id TEXT NOT NULL REFERENCES projects(id),
        title TEXT NOT NULL,
        content TEXT NOT NULL,
        created_at INTEGER NOT NULL
    );
    CREATE INDEX documents_by_project ON documents(project_id, created_at, seq);
    CREATE VIRTUAL TABLE documents_fts USING fts5(
        title, content, content='documents', content_rowid='seq',
        tokenize='porter unicode61'
    );
    CREATE TRIGGER documents_indexed AFTER INSERT ON documents BEGIN
        INSERT INTO documents_fts (rowid, title, content)
        VALUES (new.seq, new.title, new.content);
    END;
    CREATE TRIGGER documents_unindexed AFTER DELETE ON documents BEGIN
        INSERT INTO documents_fts (documents_fts, rowid, title, content)
        VALUES ('delete', old.seq, old.title, old.content);
    END;
    CREATE TRIGGER documents_reindexed AFTER UPDATE ON documents BEGIN
        INSERT INTO documents_fts (documents_fts, rowid, title, content)
        VALUES ('delete', old.seq, old.title, old.content);
        INSERT INTO documents_fts (rowid, title, content)
        VALUES (new.seq, new.title, new.content);
    END;
    CREATE TABLE personas (
        project_id TEXT NOT NULL REFERENCES projects(id),
        visitor_id TEXT NOT NULL,
        pain_points BLOB NOT NULL,
        interests BLOB NOT NULL,
        visits INTEGER NOT NULL,
        updated_at INTEGER NOT NULL,
        PRIMARY KEY (project_id, visitor_id)
    );
    CREATE TABLE scenes (
        id TEXT PRIMARY KEY,
        project_id TEXT NOT NULL REFERENCES projects(id),
        position INTEGER NOT NULL,
        title TEXT NOT NULL,
        description TEXT NOT NULL,
        duration_ms INTEGER NOT NULL,
        created_at INTEGER NOT NULL,
        updated_at INTEGER NOT NULL
    );
    CREATE INDEX scenes_by_project ON scenes(project_id, position, id);
    """,
)
SCHEMA_VERSION: Final = len(MIGRATIONS)

_GENERATION_BY_ID: Final = f"SELECT {GENERATION_COLUMNS} FROM generations WHERE id = ?"
_PROJECT_EXISTS: Final = "SELECT 1 FROM projects WHERE id = ?"
_DOCUMENT: Final = f"SELECT {DOCUMENT_COLUMNS} FROM documents WHERE project_id = ? AND id = ?"
_PERSONA: Final = f"SELECT {PERSONA_COLUMNS} FROM personas WHERE project_id = ? AND visitor_id = ?"
_SCENE: Final = f"SELECT {SCENE_COLUMNS} FROM scenes WHERE id = ?"
# Six values a row; SQLite binds at most 32,766 values in one statement (3.32 and later).
ROWS_PER_INSERT: Final = 1000
# The largest appends-alone batch committed on the loop's own thread (_LoopWriter): 32
# chunk events or 64 KiB insert and commit in about 0.1 ms here; a larger batch goes to
# aiosqlite's thread, where its one trip is a small part of the commit.
LOOP_ROWS: Final = 32
LOOP_BYTES: Final = 64 * 1024
# A checkpoint once about this many WAL frames were written: SQLite's own threshold for
# the automatic checkpoint, which the writers here turn off (_LoopWriter).
CHECKPOINT_FRAMES: Final = 1000
# What a Tx commit is guessed to write (a few rows of a few tables): it only decides
# when the next checkpoint runs.
TX_FRAMES: Final = 8


@functools.lru_cache(maxsize=LOOP_ROWS)
def _insert_rows(rows: int) -> str:
    return f"INSERT INTO events ({EVENT_COLUMNS}) VALUES " + ", ".join(
        ("(?, ?, ?, ?, ?, ?)",) * rows
    )


def _translate(exc: BaseException) -> StorageError | None:
    # The message is SQLite's own ("database is locked"): callers show it.
    return StorageError(str(exc)) if isinstance(exc, sqlite3.Error) else None


async def _connect(path: str, busy_timeout_ms: int) -> aiosqlite.Connection:
    # isolation_level=None: the writer loop issues BEGIN/COMMIT itself.
    conn = await aiosqlite.connect(path, isolation_level=None)
    conn.row_factory = sqlite3.Row
    await conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
    await conn.execute("PRAGMA foreign_keys = ON")
    return conn


class _Ids:
    """Event ids, given as rows are inserted (what the storage promises its callers).

    Only the writer connections write events (aiosqlite's, and the loop's own for small
    batches: _LoopWriter), one transaction at a time (the journal's writer loop), so the
    next id is the newest row's plus one: what
    SQLite would give the rowid itself (https://www.sqlite.org/autoinc.html: without
    AUTOINCREMENT a new rowid is one more than the largest in the table). It is decided
    before the row is written because the event's JSON carries it. A rolled-back
    transaction or savepoint hands its ids back, so ids stay dense and ordered.
    """

    def __init__(self, last: int) -> None:
        self.last = last
        self._marks: list[int] = []  # at BEGIN, then at each open savepoint

    def seal(self, encoded: Sequence[Encoded]) -> list[Event]:
        first = self.last + 1
        self.last += len(encoded)
        return [item.seal(first + offset) for offset, item in enumerate(encoded)]

    def mark(self) -> None:
        self._marks.append(self.last)

    def release(self) -> None:
        self._marks.pop()

    def restore(self) -> None:
        self.last = self._marks.pop()

    def committed(self) -> None:
        self._marks.clear()

    def rolled_back(self) -> None:
        if self._marks:  # nothing is open after a commit: a rollback then changes nothing
            self.last = self._marks[0]
            self._marks.clear()


class _LoopWriter:
    """Small appends-alone commits, run on the event loop's own thread: no thread hop.

    At 10 producers the journal commits a batch of 10 events every 0.2 to 0.3 ms, and the
    trip to aiosqlite's thread and back (its queue, then call_soon_threadsafe) cost 25 to
    35 us of each (issue 16). Here a commit is one multi-row INSERT in autocommit on a
    stdlib connection of this thread's own. What makes that safe for the loop, which
    every stream shares:

    * The commit does not sync. In WAL mode with synchronous=NORMAL "no sync operations
      occur during most transactions": the WAL is synced before each checkpoint, the
      database after it, and the WAL header when the WAL is reused after a checkpoint
      (https://www.sqlite.org/pragma.html#pragma_synchronous). So no writer connection
      checkpoints by itself (wal_autocheckpoint = 0; SQLite would otherwise run one in
      the commit that takes the WAL past 1000 pages, https://www.sqlite.org/wal.html,
      "Automatic Checkpoint"): a connection of its own does, on its own thread, as that
      page suggests ("in a separate thread or process"). Commits wait while it runs (as
      they waited for SQLite's own, run in a commit): the WAL is reused from its start
      only when every frame in it is back in the database (wal.html, "Avoiding
      Excessively Large WAL Files"), so frames added meanwhile would keep it growing.
      The first commit after a checkpoint that copied the whole WAL goes to aiosqlite's
      thread: it may reuse the WAL, and sync its header.
    * It does not wait for a lock: busy timeout 0. This process writes one commit at a
      time, but another program may hold the write lock; SQLITE_BUSY then sends the
      batch to aiosqlite's thread, which waits with the busy timeout.
    * Its batch is bounded: LOOP_ROWS rows, LOOP_BYTES of data.
    """

    def __init__(self, conn: sqlite3.Connection, checkpointer: aiosqlite.Connection) -> None:
        self._conn = conn
        self._checkpointer = checkpointer
        self._frames = 0  # WAL frames written (a guess) since the last checkpoint began
        self._checkpoint: asyncio.Task[None] | None = None
        # The next commit may start the WAL anew and sync its header: not on the loop.
        # True at start too: a WAL left empty by a clean close starts anew.
        self._restart_due = True
        self.commits = 0  # committed on the loop (tests, the journal bench)
        self.checkpoints = 0

    @classmethod
    async def open(cls, path: str, busy_timeout_ms: int) -> _LoopWriter:
        # Opened on the loop's thread, so sqlite3's check_same_thread keeps it there.
        conn = sqlite3.connect(path, timeout=0, isolation_level=None)
        try:
            conn.execute("PRAGMA synchronous = NORMAL")
            conn.execute("PRAGMA wal_autocheckpoint = 0")
            checkpointer = await _connect(path, busy_timeout_ms)
        except BaseException:
            conn.close()
            raise
        return cls(conn, checkpointer)

    def insert(self, sql: str, values: Sequence[Any], rows: int, size: int) -> bool:
        """Run the INSERT here and say True, or say False: aiosqlite's thread must."""
        if rows > LOOP_ROWS or size > LOOP_BYTES or self._restart_due:
            return False
        try:
            self._conn.execute(sql, values)
        except sqlite3.OperationalError as exc:
            if exc.sqlite_errorcode & 0xFF == sqlite3.SQLITE_BUSY:
                return False  # one statement in autocommit: nothing was written
            raise
        self.commits += 1
        return True

    async def checkpointed(self) -> None:
        """Wait for the running checkpoint, if any: what the writers do before writing."""
        if self._checkpoint is not None:
            await asyncio.shield(self._checkpoint)

    def wrote(self, frames: int, *, here: bool) -> None:
        """A commit of about `frames` WAL frames succeeded, here or on a thread."""
        if not here:
            self._restart_due = False  # a thread's commit reused the WAL if it could
        self._frames += frames
        if self._frames >= CHECKPOINT_FRAMES and self._checkpoint is None:
            self._frames = 0
            self._checkpoint = asyncio.get_running_loop().create_task(self._run_checkpoint())

    async def _run_checkpoint(self) -> None:
        try:
            rows = await self._checkpointer.execute_fetchall("PRAGMA wal_checkpoint(PASSIVE)")
            busy, frames, checkpointed = next(iter(rows))
            # Every frame back in the database: the next writer may reuse the WAL.
            self._restart_due = self._restart_due or (not busy and frames == checkpointed)
            self.checkpoints += 1
        except sqlite3.Error as exc:
            # The WAL only grows until the next one; the next commit goes to the thread.
            self._restart_due = True
            log.warning("could not checkpoint the database: %s", exc)
        finally:
            self._checkpoint = None

    async def close(self) -> None:
        if self._checkpoint is not None:
            await self._checkpoint
        self._conn.close()
        await self._checkpointer.close()


class _Readers:
    """Reader connections, each lent to one read at a time, each read one trip.

    The rule every stream rests on: a read sees every event published before the read was
    issued. A stream subscribes, then replays; an event published before the subscribe is
    not in its buffer, so the replay must see it.

    * WAL: a read transaction sees every transaction that committed before it began
      (https://www.sqlite.org/wal.html, "Concurrency": a reader remembers the WAL's last
      valid commit record when it starts). The journal publishes only after COMMIT, so a
      read that begins after it was issued sees every published event.
    * But a read transaction begins when the first statement on a connection runs, and
      lasts while any statement on that connection is open: every other statement on the
      same connection runs inside it, in the same snapshot
      (https://www.sqlite.org/isolation.html, "No Isolation Between Operations On The
      Same Database Connection", and https://www.sqlite.org/lang_transaction.html: an
      implicit transaction ends when the last active statement finishes). A read split
      into an execute trip and a fetch trip to aiosqlite's thread holds its statement
      open between them, and a replay issued meanwhile on the same connection ran in
      that older snapshot: an event published in between was in neither the replay nor
      the buffer, lost for good (issue 10).

    So a read takes a connection for itself and runs as one job on its thread (aiosqlite's
    execute_fetchall: execute and fetch all rows, which resets the statement and ends the
    transaction before the job returns). Nothing else runs on that connection meanwhile,
    so its snapshot starts when the job runs, after the read was issued. A cancelled
    caller cannot leave a statement open either: the job still runs to its end on the
    connection's thread, before the next job lent that connection.
    """

    def __init__(self, connections: Sequence[aiosqlite.Connection]) -> None:
        self._all = tuple(connections)
        self._idle = list(self._all)
        # First come, first served: a connection given back goes straight to the oldest
        # waiter. (An asyncio.Queue lets a task that gives one back take it again at once,
        # so a stream paging through a long replay starved every other read.)
        self._waiters: deque[asyncio.Future[aiosqlite.Connection]] = deque()

    @contextlib.asynccontextmanager
    async def lend(self) -> AsyncIterator[aiosqlite.Connection]:
        connection = await self._take()
        try:
            yield connection
        finally:
            self._give_back(connection)

    async def _take(self) -> aiosqlite.Connection:
        if self._idle and not self._waiters:
            return self._idle.pop()
        waiter: asyncio.Future[aiosqlite.Connection] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            return await waiter
        except asyncio.CancelledError:
            # Handed a connection, then cancelled before it could use it: pass it on.
            if waiter.done() and not waiter.cancelled():
                self._give_back(waiter.result())
            raise

    def _give_back(self, connection: aiosqlite.Connection) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(connection)
                return
        self._idle.append(connection)

    async def fetch_all(self, sql: str, params: Sequence[Any]) -> list[sqlite3.Row]:
        async with self.lend() as connection:
            return list(await connection.execute_fetchall(sql, params))

    async def close(self) -> None:
        for connection in self._all:
            await connection.close()


@translating(_translate)
class Storage:
    def __init__(
        self,
        writer: aiosqlite.Connection,
        loop_writer: _LoopWriter,
        readers: Sequence[aiosqlite.Connection],
        last_id: int,
    ) -> None:
        self._writer = writer
        self._loop_writer = loop_writer
        self._readers = _Readers(readers)
        self._ids = _Ids(last_id)
        self._known_projects: set[str] = set()

    @classmethod
    async def open(cls, path: str, busy_timeout_ms: int = 5000, readers: int = 1) -> Storage:
        try:
            return await cls._open(path, busy_timeout_ms, readers)
        except (sqlite3.Error, OSError) as exc:
            raise StorageError(f"cannot open the database {path}: {exc}") from exc

    @classmethod
    async def _open(cls, path: str, busy_timeout_ms: int, readers: int) -> Storage:
        if path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        writer = await _connect(path, busy_timeout_ms)
        try:
            mode = await (await writer.execute("PRAGMA journal_mode = WAL")).fetchone()
            if mode is None or mode[0] != "wal":
                raise StorageError(f"{path}: SQLite refused WAL mode ({mode and mode[0]})")
            # NORMAL in WAL mode: a commit survives a process crash; only an OS crash
            # may lose the last commits, never corrupt the file.
            await writer.execute("PRAGMA synchronous = NORMAL")
            # Only the loop writer's checkpointer checkpoints (_LoopWriter says why).
            await writer.execute("PRAGMA wal_autocheckpoint = 0")
            await _migrate(writer)
            newest = await writer.execute_fetchall("SELECT COALESCE(MAX(id), 0) FROM events")
            last_id = int(next(iter(newest))[0])
            loop_writer = await _LoopWriter.open(path, busy_timeout_ms)
            connections: list[aiosqlite.Connection] = []
            try:
                for _ in range(readers):
                    connections.append(reader := await _connect(path, busy_timeout_ms))
                    # A first read opens the WAL index now: a reader that is broken fails
                    # the start, and the descriptors a server holds stay the same later.
                    await reader.execute_fetchall("SELECT count(*) FROM sqlite_master")
            except BaseException:
                await _Readers(connections).close()
                await loop_writer.close()
                raise
        except BaseException:
            await writer.close()
            raise
        return cls(writer, loop_writer, connections, last_id)

    async def close(self) -> None:
        """Checkpoint the WAL into the main file, then close: a clean stop leaves one
        self-contained file (a crash leaves the WAL, which the next open replays)."""
        await self._readers.close()
        await self._loop_writer.close()
        try:
            await self._writer.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        except sqlite3.Error as exc:
            log.warning("could not checkpoint the database on close: %s", exc)
        await self._writer.close()

    # -- writes: only the journal's writer loop calls these -------------------------

    def transaction(self) -> SqliteTx:
        return SqliteTx(self._writer, self._ids, self._loop_writer)

    async def commit_events(self, encoded: Sequence[Encoded]) -> list[Event]:
        """Insert events as one transaction of their own, outside any Tx.

        Up to ROWS_PER_INSERT events go as one multi-row INSERT in autocommit mode: a
        single statement is atomic, and costs one trip to aiosqlite's thread where
        BEGIN, INSERT and COMMIT cost three; a small batch, no trip (_LoopWriter). A
        larger batch takes the long way.
        """
        if not encoded:
            return []
        if len(encoded) > ROWS_PER_INSERT:
            tx = self.transaction()
            await tx.begin()
            try:
                events = await tx.insert_events(encoded)
                await tx.commit()
            except BaseException:
                await tx.rollback()
                raise
            return events
        await self._loop_writer.checkpointed()
        self._ids.mark()
        events = self._ids.seal(encoded)
        values = [
            v for e in events for v in (e.id, e.project_id, e.generation_id, e.type, e.ts, e.data)
        ]
        sql = _insert_rows(len(events))
        size = sum(len(event.data) for event in events)
        try:
            here = self._loop_writer.insert(sql, values, len(events), size)
            if not here:
                await self._writer.execute(sql, values)
        except BaseException:
            self._ids.restore()
            raise
        self._ids.release()
        # Measured: 10 events of 250 bytes write 6.5 frames, 100 of them 19.
        self._loop_writer.wrote(3 + size // 1024, here=here)
        return events

    # -- reads ---------------------------------------------------------------------

    async def _all(self, sql: str, params: Sequence[Any] = ()) -> list[sqlite3.Row]:
        return await self._readers.fetch_all(sql, params)

    async def _one(self, sql: str, params: Sequence[Any] = ()) -> sqlite3.Row | None:
        rows = await self._readers.fetch_all(sql, params)
        return rows[0] if rows else None

    async def max_event_id(self) -> int:
        row = await self._one("SELECT COALESCE(MAX(id), 0) FROM events")
        return int(row[0]) if row else 0

    async def project_exists(self, project_id: str) -> bool:
        # Projects are never deleted: one seen is remembered, so a stream on it opens
        # without a database read before its first byte.
        if project_id in self._known_projects:
            return True
        if await self._one(_PROJECT_EXISTS, (project_id,)) is None:
            return False
        self._known_projects.add(project_id)
        return True

    async def project(self, project_id: str) -> ProjectRow | None:
        rows = await self._all(f"{PROJECT_VIEW} WHERE p.id = ?", (project_id,))
        return project_row(rows[0]) if rows else None

    async def projects(self) -> list[ProjectRow]:
        rows = await self._all(f"{PROJECT_VIEW} ORDER BY p.created_at, p.id")
        return [project_row(row) for row in rows]

    async def generation(self, generation_id: str) -> GenerationRow | None:
        row = await self._one(_GENERATION_BY_ID, (generation_id,))
        return generation_row(row) if row else None

    async def active_generation_ids(self) -> list[str]:
        rows = await self._all(
            f"SELECT id FROM generations WHERE status IN {ACTIVE} ORDER BY created_at"
        )
        return [row["id"] for row in rows]

    async def messages(self, project_id: str) -> list[MessageRow]:
        rows = await self._all(
            f"SELECT {MESSAGE_COLUMNS} FROM messages WHERE project_id = ? "
            "ORDER BY created_at, rowid",
            (project_id,),
        )
        return [MessageRow(**dict(row)) for row in rows]

    async def files(self, project_id: str) -> list[FileInfo]:
        rows = await self._all(
            "SELECT path, size, sha256, generation_id, updated_at FROM files "
            "WHERE project_id = ? ORDER BY path",
            (project_id,),
        )
        return [FileInfo(**dict(row)) for row in rows]

    async def file(self, project_id: str, path: str) -> FileRow | None:
        row = await self._one(
            "SELECT path, content, size, sha256, generation_id, updated_at FROM files "
            "WHERE project_id = ? AND path = ?",
            (project_id, path),
        )
        return FileRow(**dict(row)) if row else None

    async def file_contents(self, project_id: str) -> list[FileRecord]:
        rows = await self._all(
            "SELECT path, content, size, sha256 FROM files WHERE project_id = ? ORDER BY path",
            (project_id,),
        )
        return [FileRecord(r["path"], r["content"], r["size"], r["sha256"]) for r in rows]

    async def events_after(
        self, project_id: str, after: int, limit: int, generation_id: str | None = None
    ) -> list[Event]:
        if generation_id is None:
            sql = (
                f"SELECT {EVENT_COLUMNS} FROM events WHERE project_id = ? AND id > ? "
                "ORDER BY id LIMIT ?"
            )
            params: tuple[Any, ...] = (project_id, after, limit)
        else:
            sql = (
                f"SELECT {EVENT_COLUMNS} FROM events WHERE generation_id = ? AND id > ? "
                "ORDER BY id LIMIT ?"
            )
            params = (generation_id, after, limit)
        return [from_row(*row) for row in await self._all(sql, params)]

    async def streamed_text(self, generation_id: str) -> str:
        """The chat text a generation's message.delta events carried, joined."""
        rows = await self._all(
            "SELECT data FROM events WHERE generation_id = ? AND type = 'message.delta' "
            "ORDER BY id",
            (generation_id,),
        )
        return "".join(str(orjson.loads(row["data"]).get("delta", "")) for row in rows)

    async def documents(self, project_id: str) -> list[DocumentRow]:
        rows = await self._all(
            f"SELECT {DOCUMENT_COLUMNS} FROM documents WHERE project_id = ? "
            "ORDER BY created_at, seq",
            (project_id,),
        )
        return [document_row(row) for row in rows]

    async def document(self, project_id: str, document_id: str) -> DocumentRow | None:
        row = await self._one(_DOCUMENT, (project_id, document_id))
        return document_row(row) if row else None

    async def search_documents(self, project_id: str, query: str, limit: int) -> list[DocumentHit]:
        terms = search_terms(query)
        if not terms or limit <= 0:
            return []
        # bm25: smaller is better (https://www.sqlite.org/fts5.html, 5.1.1), a title's
        # words weighing twice its content's; the hit's rank is its negation, so that a
        # higher rank is better on both backends. snippet(-1): the column that matched best.
        rows = await self._all(
            "SELECT d.id, d.title, "
            f"snippet(documents_fts, -1, '', '', '…', {SNIPPET_WORDS}) AS snippet, "
            "-bm25(documents_fts, 2.0, 1.0) AS rank "
            "FROM documents_fts JOIN documents d ON d.seq = documents_fts.rowid "
            "WHERE documents_fts MATCH ? AND d.project_id = ? "
            "ORDER BY rank DESC, d.seq LIMIT ?",
            (any_of_quoted(terms, "OR"), project_id, limit),
        )
        return [DocumentHit(row["id"], row["title"], row["snippet"], row["rank"]) for row in rows]

    async def persona(self, project_id: str, visitor_id: str) -> PersonaRow | None:
        row = await self._one(_PERSONA, (project_id, visitor_id))
        return persona_row(row) if row else None

    async def scenes(self, project_id: str) -> list[SceneRow]:
        rows = await self._all(
            f"SELECT {SCENE_COLUMNS} FROM scenes WHERE project_id = ? ORDER BY position, id",
            (project_id,),
        )
        return [scene_row(row) for row in rows]

    async def scene(self, scene_id: str) -> SceneRow | None:
        row = await self._one(_SCENE, (scene_id,))
        return scene_row(row) if row else None

    # One process owns the file (its writer's lock): it holds every lease, none lapses
    # while it lives, and what a dead one left the next start recovers whole.
    @property
    def shared(self) -> bool:
        return False

    async def lapsed_generation_ids(self) -> list[str]:
        return []

    async def cancel_requests(self, owner: str) -> list[str]:
        return []


@translating(_translate)
class SqliteTx:
    """Statements run inside the writer loop's open transaction."""

    def __init__(self, conn: aiosqlite.Connection, ids: _Ids, loop_writer: _LoopWriter) -> None:
        self._conn = conn
        self._ids = ids
        self._loop_writer = loop_writer

    async def begin(self) -> None:
        await self._loop_writer.checkpointed()
        await self._conn.execute("BEGIN IMMEDIATE")
        self._ids.mark()

    async def commit(self) -> None:
        await self._conn.execute("COMMIT")
        self._ids.committed()
        self._loop_writer.wrote(TX_FRAMES, here=False)

    async def rollback(self) -> None:
        self._ids.rolled_back()
        # SQLite may have rolled back already (after SQLITE_FULL, say): nothing is open.
        with contextlib.suppress(sqlite3.OperationalError):
            await self._conn.execute("ROLLBACK")

    async def savepoint(self) -> None:
        await self._conn.execute("SAVEPOINT job")
        self._ids.mark()

    async def release(self) -> None:
        await self._conn.execute("RELEASE job")
        self._ids.release()

    async def rollback_to_savepoint(self) -> None:
        self._ids.restore()
        await self._conn.execute("ROLLBACK TO job")
        await self._conn.execute("RELEASE job")

    async def _one(self, sql: str, params: Sequence[Any]) -> sqlite3.Row | None:
        async with self._conn.execute(sql, params) as cursor:
            return await cursor.fetchone()

    async def insert_events(self, encoded: Sequence[Encoded]) -> list[Event]:
        events = self._ids.seal(encoded)
        await self._conn.executemany(
            f"INSERT INTO events ({EVENT_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?)",
            [(e.id, e.project_id, e.generation_id, e.type, e.ts, e.data) for e in events],
        )
        return events

    async def insert_project(
        self, project_id: str, name: str, created_at: int, *, pipeline: str | None = None
    ) -> None:
        await self._conn.execute(
            f"INSERT INTO projects ({PROJECT_COLUMNS}) VALUES (?, ?, ?, ?)",
            (project_id, name, created_at, pipeline),
        )

    async def set_project_pipeline(self, project_id: str, pipeline: str | None) -> None:
        await self._conn.execute(
            "UPDATE projects SET pipeline = ? WHERE id = ?", (pipeline, project_id)
        )

    async def project_exists(self, project_id: str) -> bool:
        return await self._one(_PROJECT_EXISTS, (project_id,)) is not None

    async def insert_message(self, message: MessageRow) -> None:
        await self._conn.execute(
            "INSERT INTO messages (id, project_id, generation_id, role, status, content, "
            "created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (
                message.id,
                message.project_id,
                message.generation_id,
                message.role,
                message.status,
                message.content,
                message.created_at,
                message.updated_at,
            ),
        )

    async def message(self, message_id: str) -> MessageRow | None:
        row = await self._one(f"SELECT {MESSAGE_COLUMNS} FROM messages WHERE id = ?", (message_id,))
        return MessageRow(**dict(row)) if row else None

    async def update_message(self, message_id: str, status: str, content: str | None) -> None:
        await self._conn.execute(
            "UPDATE messages SET status = ?, content = COALESCE(?, content), updated_at = ? "
            "WHERE id = ?",
            (status, content, now_ms(), message_id),
        )

    async def generation_by_request(
        self, project_id: str, client_request_id: str
    ) -> GenerationRow | None:
        row = await self._one(
            f"SELECT {GENERATION_COLUMNS} FROM generations "
            "WHERE project_id = ? AND client_request_id = ?",
            (project_id, client_request_id),
        )
        return generation_row(row) if row else None

    async def active_generation(self, project_id: str) -> GenerationRow | None:
        row = await self._one(
            f"SELECT {GENERATION_COLUMNS} FROM generations "
            f"WHERE project_id = ? AND status IN {ACTIVE} LIMIT 1",
            (project_id,),
        )
        return generation_row(row) if row else None

    async def generation(self, generation_id: str) -> GenerationRow | None:
        row = await self._one(_GENERATION_BY_ID, (generation_id,))
        return generation_row(row) if row else None

    async def insert_generation(
        self,
        *,
        generation_id: str,
        project_id: str,
        client_request_id: str | None,
        prompt: str,
        image_urls: list[str],
        provider: str,
        model: str,
        user_message_id: str,
        assistant_message_id: str,
        first_event_id: int,
        at: int,
        pipeline: str = DEFAULT_PIPELINE,
        inputs: Mapping[str, Any] | None = None,
    ) -> None:
        await self._conn.execute(
            "INSERT INTO generations (id, project_id, client_request_id, prompt, image_urls, "
            "status, provider, model, user_message_id, assistant_message_id, first_event_id, "
            "created_at, pipeline, inputs) "
            "VALUES (?, ?, ?, ?, ?, 'pending', ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                generation_id,
                project_id,
                client_request_id,
                prompt,
                orjson.dumps(image_urls),
                provider,
                model,
                user_message_id,
                assistant_message_id,
                first_event_id,
                at,
                pipeline,
                orjson.dumps(inputs or {}),
            ),
        )

    async def update_generation(self, generation_id: str, **fields: Any) -> None:
        allowed = {
            "status",
            "stage",
            "progress",
            "error_code",
            "error_message",
            "retryable",
            "usage",
            "timings",
            "started_at",
            "finished_at",
        }
        unknown = set(fields) - allowed
        if unknown:
            raise ValueError(f"not a generation column: {sorted(unknown)}")
        values = [
            orjson.dumps(v) if k in ("usage", "timings") and v is not None else v
            for k, v in fields.items()
        ]
        assignments = ", ".join(f"{k} = ?" for k in fields)
        await self._conn.execute(
            f"UPDATE generations SET {assignments} WHERE id = ?", (*values, generation_id)
        )

    async def insert_document(self, document: DocumentRow) -> None:
        await self._conn.execute(
            f"INSERT INTO documents ({DOCUMENT_COLUMNS}) VALUES (?, ?, ?, ?, ?)",
            (
                document.id,
                document.project_id,
                document.title,
                document.content,
                document.created_at,
            ),
        )

    async def delete_document(self, project_id: str, document_id: str) -> bool:
        cursor = await self._conn.execute(
            "DELETE FROM documents WHERE project_id = ? AND id = ?", (project_id, document_id)
        )
        return cursor.rowcount > 0

    async def persona(self, project_id: str, visitor_id: str) -> PersonaRow | None:
        row = await self._one(_PERSONA, (project_id, visitor_id))
        return persona_row(row) if row else None

    async def upsert_persona(self, persona: PersonaRow) -> None:
        await self._conn.execute(
            f"INSERT INTO personas ({PERSONA_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?) "
            f"ON CONFLICT (project_id, visitor_id) DO UPDATE SET {PERSONA_CHANGES}",
            persona_values(persona),
        )

    async def scene(self, scene_id: str) -> SceneRow | None:
        row = await self._one(_SCENE, (scene_id,))
        return scene_row(row) if row else None

    async def insert_scene(self, scene: SceneRow) -> None:
        await self._conn.execute(
            f"INSERT INTO scenes ({SCENE_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            astuple(scene),
        )

    async def update_scene(self, scene: SceneRow) -> bool:
        assignments = ", ".join(f"{name} = ?" for name in SCENE_CHANGES)
        cursor = await self._conn.execute(
            f"UPDATE scenes SET {assignments} WHERE id = ?",
            (*(getattr(scene, name) for name in SCENE_CHANGES), scene.id),
        )
        return cursor.rowcount > 0

    async def delete_scene(self, scene_id: str) -> bool:
        cursor = await self._conn.execute("DELETE FROM scenes WHERE id = ?", (scene_id,))
        return cursor.rowcount > 0

    async def upsert_files(
        self, project_id: str, generation_id: str, files: Iterable[FileRecord]
    ) -> None:
        at = now_ms()
        await self._conn.executemany(
            "INSERT INTO files (project_id, path, content, size, sha256, generation_id, "
            "updated_at) VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (project_id, path) DO UPDATE "
            "SET content = excluded.content, size = excluded.size, sha256 = excluded.sha256, "
            "generation_id = excluded.generation_id, updated_at = excluded.updated_at",
            [(project_id, f.path, f.content, f.size, f.sha256, generation_id, at) for f in files],
        )

    async def open_session(
        self,
        session_id: str,
        key: str,
        project_id: str,
        generation_id: str | None,
        peer: str | None,
        user_agent: str | None,
        cursor: int | None,
        at: int,
    ) -> None:
        await self._conn.execute(
            "INSERT INTO stream_sessions (id, key, project_id, generation_id, peer, user_agent, "
            "cursor, started_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (session_id, key, project_id, generation_id, peer, user_agent, cursor, at),
        )

    async def close_session(
        self, session_id: str, last_event_id: int | None, events_sent: int, reason: str, at: int
    ) -> None:
        await self._conn.execute(
            "UPDATE stream_sessions SET ended_at = ?, last_event_id = ?, events_sent = ?, "
            "close_reason = ? WHERE id = ?",
            (at, last_event_id, events_sent, reason, session_id),
        )

    async def prune_events(self, *, keep_per_project: int | None, older_than_ms: int | None) -> int:
        """Delete old events; never those of an active generation, nor the newest one
        (it carries the id the next process counts on from)."""
        spare = (
            "(generation_id IS NULL OR generation_id NOT IN "
            f"(SELECT id FROM generations WHERE status IN {ACTIVE})) "
            "AND id < (SELECT MAX(id) FROM events)"
        )
        deleted = 0
        if older_than_ms is not None:
            cursor = await self._conn.execute(
                f"DELETE FROM events WHERE ts < ? AND {spare}", (older_than_ms,)
            )
            deleted += cursor.rowcount
        if keep_per_project is not None:
            async with self._conn.execute(
                "SELECT p.id, (SELECT e.id FROM events e WHERE e.project_id = p.id "
                "ORDER BY e.id DESC LIMIT 1 OFFSET ?) FROM projects p",
                (keep_per_project,),
            ) as rows:
                cutoffs = [(row[0], row[1]) for row in await rows.fetchall() if row[1]]
            for project_id, cutoff in cutoffs:
                cursor = await self._conn.execute(
                    f"DELETE FROM events WHERE project_id = ? AND id <= ? AND {spare}",
                    (project_id, cutoff),
                )
                deleted += cursor.rowcount
        return deleted

    async def close_open_sessions(self, reason: str, at: int) -> None:
        await self._conn.execute(
            "UPDATE stream_sessions SET ended_at = ?, close_reason = ? WHERE ended_at IS NULL",
            (at, reason),
        )

    # Leases: this process holds them all (Storage.shared is false), so nothing to store.
    async def lock_log(self) -> None:
        return None  # the one writer connection: a transaction is alone already

    async def take_lease(self, generation_id: str, owner: str, seconds: float) -> None:
        return None

    async def holds_lease(self, generation_id: str, owner: str) -> bool:
        return True

    async def lease_lapsed(self, generation_id: str) -> bool:
        return False

    async def renew_leases(
        self, owner: str, seconds: float, generation_ids: Sequence[str]
    ) -> list[str]:
        return []

    async def request_cancel(self, generation_id: str) -> None:
        return None


def _statements(script: str) -> list[str]:
    """A migration's statements, one at a time (execute runs one): split at each `;`
    that ends a whole statement, so a trigger's body, `;`s and all, stays one."""
    statements: list[str] = []
    pending = ""
    for piece in script.split(";"):
        pending += piece + ";"
        if sqlite3.complete_statement(pending):
            statements.append(pending.strip())
            pending = ""
    if pending.strip(" \n;"):
        raise ValueError(f"an incomplete statement in a migration: {pending!r}")
    return statements


async def _migrate(conn: aiosqlite.Connection) -> None:
    row = await (await conn.execute("PRAGMA user_version")).fetchone()
    version = int(row[0]) if row else 0
    if version > SCHEMA_VERSION:
        raise StorageError(
            f"the database is at schema version {version}, newer than this code "
            f"({SCHEMA_VERSION}); upgrade genstream"
        )
    for number in range(version, SCHEMA_VERSION):
        await conn.execute("BEGIN IMMEDIATE")
        try:
            for statement in _statements(MIGRATIONS[number]):
                await conn.execute(statement)
            await conn.execute(f"PRAGMA user_version = {number + 1}")
            await conn.execute("COMMIT")
        except BaseException:
            await conn.execute("ROLLBACK")
            raise
        log.info("database migrated to schema version %d", number + 1)
