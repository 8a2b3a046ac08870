"""PostgreSQL storage (asyncpg): the schema, its migrations, and every SQL statement.

One writer connection, driven only by the journal's writer loop (one transaction at a
time per process, as on SQLite), and a pool of reader connections (`storage.pool_size`)
for the HTTP reads and stream replays. asyncpg prepares each statement once per
connection and keeps it (its statement cache), so the reads here are plain `fetch` calls.

**Commit order is id order.** A reader at cursor C asks for `id > C`; if a lower id could
commit after a higher one was seen, that reader would skip it for good (the trap of a
sequence: ids handed out at insert, transactions committing in any order). So ids come
from one counter row, `event_log_head`, taken by `UPDATE ... RETURNING` in the statement
that inserts the events. The UPDATE row-locks the counter until the transaction ends
(PostgreSQL 15 docs, 13.3.2 "Row-Level Locks": an UPDATE takes FOR NO KEY UPDATE, which
conflicts with itself, and row-level locks are released at transaction end or during
savepoint rollback; https://www.postgresql.org/docs/15/explicit-locking.html#LOCKING-ROWS).
A second writer's UPDATE waits for the first to commit, then applies to the row it left
(13.2.1 "Read Committed Isolation Level": the would-be updater waits for the first
updating transaction, then works on its updated version;
https://www.postgresql.org/docs/15/transaction-iso.html#XACT-READ-COMMITTED). Every
writer of events goes through `_INSERT_EVENTS`: the journal of every process, whichever
job (a generation, a cancel, the reaper) emits. So within a project, and in fact in the
whole database, an id is taken only after every lower id committed or rolled back, and
a rolled-back transaction or savepoint gives its ids back with the counter (no holes).

**Why one lock for the log, not one per project.** A lock per project (a counter row
per project) would let writers of different projects commit side by side. But the
journal commits a batch of jobs as one transaction, and which projects it touches is
known only as its jobs run, in their arrival order: process A's batch may take P2 then
P1 while process B's takes P1 then P2, a deadlock (PostgreSQL would find it after
`deadlock_timeout` and abort one batch: its callers would get a 503). Locks taken in one
fixed order need the whole set before the first; "commit per project" needs the journal
to split its batch by project, which its jobs do not declare. One lock is the fixed order
that needs neither: it is taken at a transaction's first event insert, held to its
commit, and a transaction waits for it holding no other lock of the log's. Within one
process it costs nothing (the journal is one writer already); processes take turns from
a batch's first event to its commit (a few round trips and the commit's flush).

**A read sees every event published before it was issued.** Reads run in autocommit
READ COMMITTED, one statement each: a statement sees the rows committed before it began
(13.2.1: "a SELECT query ... sees only data committed before the query began"), and the
journal publishes only after COMMIT returned. The project view is one statement, so one
snapshot.

asyncpg's exceptions stop at this module's boundary: every public coroutine raises
StorageError for a database failure, as the SQLite backend does.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import astuple
from typing import Any, Final

import asyncpg
import orjson

from service.config import redacted
from service.eventlog.event import Encoded, Event, from_row, now_ms
from service.files import FileRecord
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
    Duplicate,
    FileInfo,
    FileRow,
    GenerationRow,
    MessageRow,
    PersonaRow,
    ProjectRow,
    SceneRow,
    StorageError,
)

log = logging.getLogger(__name__)

# Each entry moves the schema one version up; genstream_schema holds the version.
MIGRATIONS: Final[tuple[str, ...]] = (
    """
    CREATE TABLE projects (
        id text PRIMARY KEY,
        name text NOT NULL,
        created_at bigint NOT NULL
    );
    CREATE TABLE messages (
        id text PRIMARY KEY,
        project_id text NOT NULL REFERENCES projects(id),
        generation_id text,
        role text NOT NULL CHECK (role IN ('user', 'assistant')),
        status text NOT NULL,
        content text NOT NULL,
        created_at bigint NOT NULL,
        updated_at bigint NOT NULL,
        seq bigint GENERATED ALWAYS AS IDENTITY
    );
    CREATE INDEX messages_by_project ON messages(project_id, created_at, seq);
    CREATE TABLE generations (
        id text PRIMARY KEY,
        project_id text NOT NULL REFERENCES projects(id),
        client_request_id text,
        prompt text NOT NULL,
        image_urls jsonb NOT NULL,
        status text NOT NULL,
        stage text,
        progress integer NOT NULL DEFAULT 0,
        error_code text,
        error_message text,
        retryable boolean,
        usage jsonb,
        timings jsonb,
        provider text NOT NULL,
        model text NOT NULL,
        user_message_id text NOT NULL,
        assistant_message_id text NOT NULL,
        first_event_id bigint,
        created_at bigint NOT NULL,
        started_at bigint,
        finished_at bigint,
        UNIQUE (project_id, client_request_id)
    );
    CREATE INDEX generations_by_status ON generations(status);
    CREATE TABLE events (
        id bigint PRIMARY KEY,
        project_id text NOT NULL,
        generation_id text,
        type text NOT NULL,
        ts bigint NOT NULL,
        data bytea NOT NULL
    );
    CREATE INDEX events_by_project ON events(project_id, id);
    CREATE INDEX events_by_generation ON events(generation_id, id);
    -- The newest event id given: one row, the lock every event insert takes (above).
    CREATE TABLE event_log_head (
        only_row boolean PRIMARY KEY DEFAULT true CHECK (only_row),
        last_event_id bigint NOT NULL
    );
    INSERT INTO event_log_head (last_event_id) VALUES (0);
    CREATE TABLE files (
        project_id text NOT NULL REFERENCES projects(id),
        path text NOT NULL,
        content text NOT NULL,
        size bigint NOT NULL,
        sha256 text NOT NULL,
        generation_id text NOT NULL,
        updated_at bigint NOT NULL,
        PRIMARY KEY (project_id, path)
    );
    CREATE TABLE stream_sessions (
        id text PRIMARY KEY,
        key text NOT NULL,
        project_id text NOT NULL,
        generation_id text,
        peer text,
        user_agent text,
        cursor bigint,
        started_at bigint NOT NULL,
        ended_at bigint,
        last_event_id bigint,
        events_sent bigint NOT NULL DEFAULT 0,
        close_reason text
    );
    """,
    # 2. Leases (issue 13 item 4, generation/leases.py): the process running a generation
    # (owner, a fresh identity each start) and until when its claim holds; a cancel asked
    # on another process; one active generation per project held by the database itself,
    # so two processes racing to submit cannot both pass the lifecycle's check.
    """
    ALTER TABLE generations
        ADD COLUMN owner text,
        ADD COLUMN lease_expires_at timestamptz,
        ADD COLUMN cancel_requested boolean NOT NULL DEFAULT false;
    CREATE UNIQUE INDEX generations_one_active ON generations(project_id)
        WHERE status IN ('pending', 'running');
    """,
    # 3. Pipelines (issue 14): the pipeline that runs a generation and its inputs object;
    # a project's default pipeline (NULL: the config's). Every older generation was code's.
    """
    ALTER TABLE generations
        ADD COLUMN pipeline text NOT NULL DEFAULT 'code',
        ADD COLUMN inputs jsonb NOT NULL DEFAULT '{}'::jsonb;
    ALTER TABLE projects ADD COLUMN pipeline text;
    """,
    # 4. The pipelines' state (issue 14): a project's documents with their words as a
    # generated tsvector (title weighted A, content B) under a GIN index, kept in step by
    # PostgreSQL itself in the transaction of each write ("a generated column is always
    # computed from other columns", https://www.postgresql.org/docs/15/ddl-generated-columns.html;
    # 12.2.2 "Creating Indexes", https://www.postgresql.org/docs/15/textsearch-tables.html);
    # seq keeps their order among those of one millisecond, as messages' does. What a
    # project knows of each visitor; scenes.
    """
    CREATE TABLE documents (
        id text PRIMARY KEY,
        project_id text NOT NULL REFERENCES projects(id),
        title text NOT NULL,
        content text NOT NULL,
        created_at bigint NOT NULL,
        seq bigint GENERATED ALWAYS AS IDENTITY,
        words tsvector GENERATED ALWAYS AS (
            setweight(to_tsvector('english', title), 'A')
            || setweight(to_tsvector('english', content), 'B')
        ) STORED
    );
    CREATE INDEX documents_by_project ON documents(project_id, created_at, seq);
    CREATE INDEX documents_words ON documents USING GIN (words);
    CREATE TABLE personas (
        project_id text NOT NULL REFERENCES projects(id),
        visitor_id text NOT NULL,
        pain_points jsonb NOT NULL,
        interests jsonb NOT NULL,
        visits integer NOT NULL,
        updated_at bigint NOT NULL,
        PRIMARY KEY (project_id, visitor_id)
    );
    CREATE TABLE scenes (
        id text PRIMARY KEY,
        project_id text NOT NULL REFERENCES projects(id),
        position integer NOT NULL,
        title text NOT NULL,
        description text NOT NULL,
        duration_ms bigint NOT NULL,
        created_at bigint NOT NULL,
        updated_at bigint NOT NULL
    );
    CREATE INDEX scenes_by_project ON scenes(project_id, position, id);
    """,
)
SCHEMA_VERSION: Final = len(MIGRATIONS)
# Processes starting together migrate one at a time (a transaction-level advisory lock).
MIGRATION_LOCK: Final = 0x67656E73  # "gens"
CONNECT_TIMEOUT_SECONDS: Final = 10.0
# The writer's transactions hold the log's lock (_INSERT_EVENTS) from their first event
# to their commit, with no wait on the client's side but the Python between statements.
# A process paused in one (SIGSTOP, a frozen VM) would hold every process's writes, the
# reaper's included, for as long as it stays paused; PostgreSQL ends such a session:
# "Terminate any session that has been idle (that is, waiting for a client query) within
# an open transaction for longer than the specified amount of time", which "can be used to
# ensure that idle sessions do not hold locks for an unreasonable amount of time" (15 docs,
# 20.11.1, https://www.postgresql.org/docs/15/runtime-config-client.html#GUC-IDLE-IN-TRANSACTION-SESSION-TIMEOUT).
# The paused process then finds its connection gone, its batch failed, and connects again.
WRITER_IDLE_IN_TRANSACTION_MS: Final = 2000
# Every commit that inserts events notifies this channel (payload: the head it moved the
# log to); each process's listener (`listen`) hears it. Only a hint: see `listen`.
NOTIFY_CHANNEL: Final = "genstream_events"
# The listening connection's application_name (pg_stat_activity), with the process id,
# so an operator (or a test) can tell which process's listener a backend is.
LISTENER_NAME: Final = "genstream-listen"
# A lost listening connection is connected again after 0.1 s, doubling to 2 s: soon after
# the database is back, and no faster than 2 s while it stays away.
LISTEN_RETRY_FIRST_SECONDS: Final = 0.1
LISTEN_RETRY_MAX_SECONDS: Final = 2.0
# A connection the network dropped without a FIN or RST looks idle, not closed: the
# listener asks it a trivial question this often, and one unanswered in time ends it.
LISTEN_CHECK_SECONDS: Final = 5.0
LISTEN_CHECK_TIMEOUT_SECONDS: Final = 5.0

_GENERATION_FIELDS: Final = frozenset(
    {
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
)
_JSON_FIELDS: Final = frozenset({"usage", "timings"})
_GENERATION_BY_ID: Final = f"SELECT {GENERATION_COLUMNS} FROM generations WHERE id = $1"
_PROJECT_EXISTS: Final = "SELECT 1 FROM projects WHERE id = $1"
_DOCUMENT: Final = f"SELECT {DOCUMENT_COLUMNS} FROM documents WHERE project_id = $1 AND id = $2"
_PERSONA: Final = (
    f"SELECT {PERSONA_COLUMNS} FROM personas WHERE project_id = $1 AND visitor_id = $2"
)
_SCENE: Final = f"SELECT {SCENE_COLUMNS} FROM scenes WHERE id = $1"
# A search: websearch_to_tsquery never refuses its input ("raw user-supplied text ... will
# never raise syntax errors", https://www.postgresql.org/docs/15/textsearch-controls.html,
# 12.3.2), and takes the quoted words `"a" or "b"` as any of them; ts_rank_cd ranks by
# how densely the document covers them, higher better (12.3.3). The snippet is
# ts_headline's, its matches unmarked (StartSel and StopSel empty): plain text.
_SEARCH: Final = f"""
    SELECT d.id, d.title, ts_rank_cd(d.words, q) AS rank,
           ts_headline('english', d.content, q,
                       'StartSel="", StopSel="", MinWords=8, MaxWords={SNIPPET_WORDS}')
               AS snippet
    FROM documents d, websearch_to_tsquery('english', $2) q
    WHERE d.project_id = $1 AND d.words @@ q
    ORDER BY rank DESC, d.seq
    LIMIT $3
"""
# Ids and rows in one statement (one round trip, atomic even in autocommit): the counter
# moves by the number of events, under its row lock; each event's data is built here
# as Encoded.seal builds it ('{"id":N,' then the rest), so the stored bytes and the
# published ones are the same. Returns the id before the first. The same statement
# notifies NOTIFY_CHANNEL with the new head: still one round trip, and the notification
# goes out only when (and if) the transaction commits ("if a NOTIFY is executed inside a
# transaction, the notify events are not delivered until and unless the transaction is
# committed", https://www.postgresql.org/docs/15/sql-notify.html), so a listener that
# hears it reads a head that holds these events.
_INSERT_EVENTS: Final = f"""
    WITH head AS (
        UPDATE event_log_head SET last_event_id = last_event_id + cardinality($1::text[])
        RETURNING last_event_id - cardinality($1::text[]) AS base
    ), inserted AS (
        INSERT INTO events ({EVENT_COLUMNS})
        SELECT head.base + e.n, e.project_id, e.generation_id, e.type, e.ts,
               convert_to('{{"id":' || (head.base + e.n)::text || ',', 'UTF8') || e.rest
        FROM head, unnest($1::text[], $2::text[], $3::text[], $4::bigint[], $5::bytea[])
            WITH ORDINALITY AS e(project_id, generation_id, type, ts, rest, n)
    )
    SELECT base, pg_notify('{NOTIFY_CHANNEL}', (base + cardinality($1::text[]))::text)
    FROM head
"""

# Leases, on the server's clock (clock_timestamp(), not now(): a journal batch is one
# transaction, and now() is its start), so processes on machines whose clocks differ agree.
_LEASED_UNTIL: Final = "clock_timestamp() + make_interval(secs => $3::float8)"
_LAPSED: Final = "(lease_expires_at IS NULL OR lease_expires_at <= clock_timestamp())"
# Every check of a lease locks the log first, then the generation's row (FOR UPDATE).
# The row lock serializes an owner's write with another process's end of the same
# generation: a second SELECT ... FOR UPDATE of the row waits until the first
# transaction ends, then re-checks its WHERE on the row as the first left it (PostgreSQL
# 15 docs, 13.3.2 "Row-Level Locks": FOR UPDATE "causes the rows retrieved by the SELECT
# statement to be locked as though for update", blocking other FOR UPDATE until the
# transaction ends, https://www.postgresql.org/docs/15/explicit-locking.html#LOCKING-ROWS;
# and 13.2.1: in Read Committed a waiting locker "will re-evaluate its WHERE clause" on
# the updated row, https://www.postgresql.org/docs/15/transaction-iso.html#XACT-READ-COMMITTED).
# The log first, since every writer of events takes it (_INSERT_EVENTS) and holds it to
# commit: a batch holding it and waiting for a row locked by a batch that waits for it
# would deadlock. Taken first, in every transaction that locks a generation's row, it is
# one fixed order. FOR NO KEY UPDATE conflicts with the UPDATE's own lock on that row.
_LOCK_LOG: Final = "SELECT last_event_id FROM event_log_head FOR NO KEY UPDATE"

# The uniqueness rules two processes racing to submit can meet, each the same answer as
# the lifecycle's own check on one process (generation/lifecycle.py, submit): the same
# client_request_id, a second active generation in a project. Any other is a failure.
RACED_CONSTRAINTS: Final = frozenset(
    {"generations_project_id_client_request_id_key", "generations_one_active"}
)

# What asyncpg raises for a database failure: the server's errors (PostgresError), a
# connection closed or misused (InterfaceError, InternalClientError), the network (OSError,
# TimeoutError among them).
DRIVER_ERRORS: Final = (
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    asyncpg.InternalClientError,
    OSError,
)


def _translate(exc: BaseException) -> StorageError | None:
    if isinstance(exc, asyncpg.UniqueViolationError) and exc.constraint_name in RACED_CONSTRAINTS:
        return Duplicate(exc.constraint_name, _message(exc))
    return StorageError(_message(exc)) if isinstance(exc, DRIVER_ERRORS) else None


def _message(exc: BaseException) -> str:
    # PostgreSQL's own message ("duplicate key value violates unique constraint ..."),
    # or the driver's, or the socket's: callers show it.
    return str(exc) or type(exc).__name__


def _events(encoded: Sequence[Encoded]) -> tuple[list[Any], ...]:
    """The insert's five arrays, one value an event each, in the order given."""
    return (
        [item.draft.project_id for item in encoded],
        [item.draft.generation_id for item in encoded],
        [item.draft.type for item in encoded],
        [item.draft.ts for item in encoded],
        [item.rest for item in encoded],
    )


async def _insert_events(conn: asyncpg.Connection, encoded: Sequence[Encoded]) -> list[Event]:
    if not encoded:
        return []
    base = await conn.fetchval(_INSERT_EVENTS, *_events(encoded))
    return [item.seal(int(base) + offset) for offset, item in enumerate(encoded, start=1)]


@translating(_translate)
class PostgresStorage:
    def __init__(self, url: str, writer: asyncpg.Connection, readers: asyncpg.Pool) -> None:
        self._url = url
        self._writer = writer
        self._readers = readers
        self._known_projects: set[str] = set()

    @classmethod
    async def open(cls, url: str, pool_size: int = 10) -> PostgresStorage:
        """Connect, migrate, and open the readers' pool. An unreachable server, a
        refused login or a missing database is a StorageError naming the url (its
        password, if any, hidden)."""
        try:
            writer = await _connect(url)
        except DRIVER_ERRORS as exc:
            raise StorageError(
                f"cannot connect to PostgreSQL at {redacted(url)}: {_message(exc)}"
            ) from exc
        try:
            await _migrate(writer)
            readers = await asyncpg.create_pool(
                url, min_size=1, max_size=pool_size, timeout=CONNECT_TIMEOUT_SECONDS
            )
        except DRIVER_ERRORS as exc:
            await writer.close()
            raise StorageError(
                f"cannot open PostgreSQL at {redacted(url)}: {_message(exc)}"
            ) from exc
        except BaseException:
            await writer.close()
            raise
        return cls(url, writer, readers)

    async def close(self) -> None:
        await self._readers.close()
        await self._writer.close()

    @property
    def shared(self) -> bool:
        return True

    # -- writes: only the journal's writer loop calls these -------------------------

    async def _writing(self) -> asyncpg.Connection:
        """The writer connection, connected again if it was lost (a restarted server, a
        terminated backend): the batch that met the loss failed; the next one goes on."""
        if self._writer.is_closed():
            log.warning("the PostgreSQL writer connection was lost: connecting again")
            self._writer = await _connect(self._url)
        return self._writer

    def transaction(self) -> PostgresTx:
        return PostgresTx(self)

    async def commit_events(self, encoded: Sequence[Encoded]) -> list[Event]:
        """Insert events as one transaction of their own: `_INSERT_EVENTS` is one
        statement, so in autocommit mode it is that transaction, in one round trip."""
        return await _insert_events(await self._writing(), encoded)

    # -- reads ---------------------------------------------------------------------

    async def max_event_id(self) -> int:
        return int(await self._readers.fetchval("SELECT last_event_id FROM event_log_head"))

    async def project_exists(self, project_id: str) -> bool:
        # Projects are never deleted: one seen is remembered.
        if project_id in self._known_projects:
            return True
        if await self._readers.fetchval(_PROJECT_EXISTS, project_id) is None:
            return False
        self._known_projects.add(project_id)
        return True

    async def project(self, project_id: str) -> ProjectRow | None:
        row = await self._readers.fetchrow(f"{PROJECT_VIEW} WHERE p.id = $1", project_id)
        return project_row(row) if row else None

    async def projects(self) -> list[ProjectRow]:
        rows = await self._readers.fetch(f"{PROJECT_VIEW} ORDER BY p.created_at, p.id")
        return [project_row(row) for row in rows]

    async def generation(self, generation_id: str) -> GenerationRow | None:
        row = await self._readers.fetchrow(_GENERATION_BY_ID, generation_id)
        return generation_row(row) if row else None

    async def active_generation_ids(self) -> list[str]:
        rows = await self._readers.fetch(
            f"SELECT id FROM generations WHERE status IN {ACTIVE} ORDER BY created_at, id"
        )
        return [row["id"] for row in rows]

    async def messages(self, project_id: str) -> list[MessageRow]:
        rows = await self._readers.fetch(
            f"SELECT {MESSAGE_COLUMNS} FROM messages WHERE project_id = $1 "
            "ORDER BY created_at, seq",
            project_id,
        )
        return [MessageRow(**dict(row)) for row in rows]

    async def files(self, project_id: str) -> list[FileInfo]:
        rows = await self._readers.fetch(
            "SELECT path, size, sha256, generation_id, updated_at FROM files "
            "WHERE project_id = $1 ORDER BY path",
            project_id,
        )
        return [FileInfo(**dict(row)) for row in rows]

    async def file(self, project_id: str, path: str) -> FileRow | None:
        row = await self._readers.fetchrow(
            "SELECT path, content, size, sha256, generation_id, updated_at FROM files "
            "WHERE project_id = $1 AND path = $2",
            project_id,
            path,
        )
        return FileRow(**dict(row)) if row else None

    async def file_contents(self, project_id: str) -> list[FileRecord]:
        rows = await self._readers.fetch(
            "SELECT path, content, size, sha256 FROM files WHERE project_id = $1 ORDER BY path",
            project_id,
        )
        return [FileRecord(r["path"], r["content"], r["size"], r["sha256"]) for r in rows]

    async def events_after(
        self, project_id: str, after: int, limit: int, generation_id: str | None = None
    ) -> list[Event]:
        column, key = (
            ("project_id", project_id)
            if generation_id is None
            else (
                "generation_id",
                generation_id,
            )
        )
        rows = await self._readers.fetch(
            f"SELECT {EVENT_COLUMNS} FROM events WHERE {column} = $1 AND id > $2 "
            "ORDER BY id LIMIT $3",
            key,
            after,
            limit,
        )
        return [from_row(*row) for row in rows]

    async def streamed_text(self, generation_id: str) -> str:
        """The chat text a generation's message.delta events carried, joined."""
        rows = await self._readers.fetch(
            "SELECT data FROM events WHERE generation_id = $1 AND type = 'message.delta' "
            "ORDER BY id",
            generation_id,
        )
        return "".join(str(orjson.loads(row["data"]).get("delta", "")) for row in rows)

    async def documents(self, project_id: str) -> list[DocumentRow]:
        rows = await self._readers.fetch(
            f"SELECT {DOCUMENT_COLUMNS} FROM documents WHERE project_id = $1 "
            "ORDER BY created_at, seq",
            project_id,
        )
        return [document_row(row) for row in rows]

    async def document(self, project_id: str, document_id: str) -> DocumentRow | None:
        row = await self._readers.fetchrow(_DOCUMENT, project_id, document_id)
        return document_row(row) if row else None

    async def search_documents(self, project_id: str, query: str, limit: int) -> list[DocumentHit]:
        terms = search_terms(query)
        if not terms or limit <= 0:
            return []
        rows = await self._readers.fetch(_SEARCH, project_id, any_of_quoted(terms, "or"), limit)
        return [
            DocumentHit(row["id"], row["title"], row["snippet"], float(row["rank"])) for row in rows
        ]

    async def persona(self, project_id: str, visitor_id: str) -> PersonaRow | None:
        row = await self._readers.fetchrow(_PERSONA, project_id, visitor_id)
        return persona_row(row) if row else None

    async def scenes(self, project_id: str) -> list[SceneRow]:
        rows = await self._readers.fetch(
            f"SELECT {SCENE_COLUMNS} FROM scenes WHERE project_id = $1 ORDER BY position, id",
            project_id,
        )
        return [scene_row(row) for row in rows]

    async def scene(self, scene_id: str) -> SceneRow | None:
        row = await self._readers.fetchrow(_SCENE, scene_id)
        return scene_row(row) if row else None

    async def lapsed_generation_ids(self) -> list[str]:
        rows = await self._readers.fetch(
            f"SELECT id FROM generations WHERE status IN {ACTIVE} AND {_LAPSED} "
            "ORDER BY created_at, id"
        )
        return [row["id"] for row in rows]

    async def cancel_requests(self, owner: str) -> list[str]:
        rows = await self._readers.fetch(
            f"SELECT id FROM generations WHERE owner = $1 AND cancel_requested "
            f"AND status IN {ACTIVE}",
            owner,
        )
        return [row["id"] for row in rows]

    # -- the shared log: several processes (eventlog/feed.py, interface.SharedLog) -----

    async def events_since(
        self, after: int, upto: int, project_ids: Sequence[str], limit: int
    ) -> list[Event]:
        """Events with after < id <= upto of those projects, in id order: one statement,
        a range of the primary key filtered by project. Every id up to a head read
        before it (`max_event_id`) has committed (the module's docstring), and this
        statement sees what committed before it began (13.2.1), so none is missed."""
        rows = await self._readers.fetch(
            f"SELECT {EVENT_COLUMNS} FROM events WHERE id > $1 AND id <= $2 "
            "AND project_id = ANY($3::text[]) ORDER BY id LIMIT $4",
            after,
            upto,
            list(project_ids),
            limit,
        )
        return [from_row(*row) for row in rows]

    async def listen(self, on_commit: Callable[[], None]) -> None:
        """Call `on_commit` each time a commit that inserted events is notified (every
        process's, this one's included), and after each connect of the listening
        connection: a commit made while no LISTEN was on (before the first, or while the
        connection was lost) was heard by nobody here. Runs until cancelled.

        A connection of its own, not the pool's: a LISTEN belongs to its session and
        lasts as long as it ("LISTEN takes effect at transaction commit ... the session
        is unregistered automatically when it ends",
        https://www.postgresql.org/docs/15/sql-listen.html). Lost (a terminated backend,
        a restarted server: asyncpg calls the termination listener; or a check left
        unanswered), it is connected again with a bounded backoff."""
        retry = LISTEN_RETRY_FIRST_SECONDS
        while True:
            try:
                conn = await _listener_connection(self._url)
            except DRIVER_ERRORS as exc:
                log.warning("cannot LISTEN on PostgreSQL (again in %.1f s): %s", retry, exc)
            else:
                try:
                    await _listen_until_lost(conn, on_commit)
                    retry = LISTEN_RETRY_FIRST_SECONDS  # it was up: the next try is quick
                except DRIVER_ERRORS as exc:
                    log.warning("the PostgreSQL LISTEN connection failed: %s", exc)
                finally:
                    await _close_quietly(conn)
                log.warning("the PostgreSQL LISTEN connection was lost: connecting again")
            await asyncio.sleep(retry)
            retry = min(retry * 2, LISTEN_RETRY_MAX_SECONDS)


@translating(_translate)
class PostgresTx:
    """Statements run inside the writer loop's open transaction, on the writer connection."""

    def __init__(self, storage: PostgresStorage) -> None:
        self._storage = storage

    @property
    def _conn(self) -> asyncpg.Connection:
        return self._storage._writer

    async def begin(self) -> None:
        # READ COMMITTED, PostgreSQL's default: each statement sees what committed before it.
        await (await self._storage._writing()).execute("BEGIN")

    async def commit(self) -> None:
        # A COMMIT of a transaction an error aborted rolls it back and says so only in
        # its command tag: "in an aborted transaction, a COMMIT command returns a command
        # tag of the form ROLLBACK" (https://www.postgresql.org/docs/current/sql-commit.html,
        # Outputs), and asyncpg returns the tag without raising. The journal publishes
        # after commit returns, so a rolled-back batch would reach clients as events the
        # log never stored: a failure, like any refused write.
        status = await self._conn.execute("COMMIT")
        if status != "COMMIT":
            raise StorageError(f"the transaction was rolled back, not committed ({status})")

    async def rollback(self) -> None:
        # Nothing open (committed already, or the connection lost with its transaction):
        # nothing to undo, and a ROLLBACK would only draw a warning.
        if not self._conn.is_closed() and self._conn.is_in_transaction():
            await self._conn.execute("ROLLBACK")

    async def savepoint(self) -> None:
        await self._conn.execute("SAVEPOINT job")

    async def release(self) -> None:
        await self._conn.execute("RELEASE SAVEPOINT job")

    async def rollback_to_savepoint(self) -> None:
        await self._conn.execute("ROLLBACK TO SAVEPOINT job; RELEASE SAVEPOINT job")

    async def insert_events(self, encoded: Sequence[Encoded]) -> list[Event]:
        return await _insert_events(self._conn, encoded)

    async def insert_project(
        self, project_id: str, name: str, created_at: int, *, pipeline: str | None = None
    ) -> None:
        await self._conn.execute(
            f"INSERT INTO projects ({PROJECT_COLUMNS}) VALUES ($1, $2, $3, $4)",
            project_id,
            name,
            created_at,
            pipeline,
        )

    async def set_project_pipeline(self, project_id: str, pipeline: str | None) -> None:
        await self._conn.execute(
            "UPDATE projects SET pipeline = $1 WHERE id = $2", pipeline, project_id
        )

    async def project_exists(self, project_id: str) -> bool:
        return await self._conn.fetchval(_PROJECT_EXISTS, project_id) is not None

    async def insert_message(self, message: MessageRow) -> None:
        await self._conn.execute(
            "INSERT INTO messages (id, project_id, generation_id, role, status, content, "
            "created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
            message.id,
            message.project_id,
            message.generation_id,
            message.role,
            message.status,
            message.content,
            message.created_at,
            message.updated_at,
        )

    async def message(self, message_id: str) -> MessageRow | None:
        row = await self._conn.fetchrow(
            f"SELECT {MESSAGE_COLUMNS} FROM messages WHERE id = $1", message_id
        )
        return MessageRow(**dict(row)) if row else None

    async def update_message(self, message_id: str, status: str, content: str | None) -> None:
        await self._conn.execute(
            "UPDATE messages SET status = $1, content = COALESCE($2, content), updated_at = $3 "
            "WHERE id = $4",
            status,
            content,
            now_ms(),
            message_id,
        )

    async def generation_by_request(
        self, project_id: str, client_request_id: str
    ) -> GenerationRow | None:
        row = await self._conn.fetchrow(
            f"SELECT {GENERATION_COLUMNS} FROM generations "
            "WHERE project_id = $1 AND client_request_id = $2",
            project_id,
            client_request_id,
        )
        return generation_row(row) if row else None

    async def active_generation(self, project_id: str) -> GenerationRow | None:
        row = await self._conn.fetchrow(
            f"SELECT {GENERATION_COLUMNS} FROM generations "
            f"WHERE project_id = $1 AND status IN {ACTIVE} LIMIT 1",
            project_id,
        )
        return generation_row(row) if row else None

    async def generation(self, generation_id: str) -> GenerationRow | None:
        row = await self._conn.fetchrow(_GENERATION_BY_ID, generation_id)
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
            "VALUES ($1, $2, $3, $4, $5, 'pending', $6, $7, $8, $9, $10, $11, $12, $13)",
            generation_id,
            project_id,
            client_request_id,
            prompt,
            orjson.dumps(image_urls).decode(),
            provider,
            model,
            user_message_id,
            assistant_message_id,
            first_event_id,
            at,
            pipeline,
            orjson.dumps(inputs or {}).decode(),
        )

    async def update_generation(self, generation_id: str, **fields: Any) -> None:
        unknown = set(fields) - _GENERATION_FIELDS
        if unknown:
            raise ValueError(f"not a generation column: {sorted(unknown)}")
        values = [
            orjson.dumps(v).decode() if k in _JSON_FIELDS and v is not None else v
            for k, v in fields.items()
        ]
        assignments = ", ".join(f"{k} = ${n}" for n, k in enumerate(fields, start=1))
        await self._conn.execute(
            f"UPDATE generations SET {assignments} WHERE id = ${len(fields) + 1}",
            *values,
            generation_id,
        )

    async def insert_document(self, document: DocumentRow) -> None:
        await self._conn.execute(
            f"INSERT INTO documents ({DOCUMENT_COLUMNS}) VALUES ($1, $2, $3, $4, $5)",
            *astuple(document),
        )

    async def delete_document(self, project_id: str, document_id: str) -> bool:
        status = await self._conn.execute(
            "DELETE FROM documents WHERE project_id = $1 AND id = $2", project_id, document_id
        )
        return _row_count(status) > 0

    async def persona(self, project_id: str, visitor_id: str) -> PersonaRow | None:
        row = await self._conn.fetchrow(_PERSONA, project_id, visitor_id)
        return persona_row(row) if row else None

    async def upsert_persona(self, persona: PersonaRow) -> None:
        await self._conn.execute(
            f"INSERT INTO personas ({PERSONA_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6) "
            f"ON CONFLICT (project_id, visitor_id) DO UPDATE SET {PERSONA_CHANGES}",
            *persona_values(persona),
        )

    async def scene(self, scene_id: str) -> SceneRow | None:
        row = await self._conn.fetchrow(_SCENE, scene_id)
        return scene_row(row) if row else None

    async def insert_scene(self, scene: SceneRow) -> None:
        await self._conn.execute(
            f"INSERT INTO scenes ({SCENE_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
            *astuple(scene),
        )

    async def update_scene(self, scene: SceneRow) -> bool:
        assignments = ", ".join(f"{name} = ${n}" for n, name in enumerate(SCENE_CHANGES, 2))
        status = await self._conn.execute(
            f"UPDATE scenes SET {assignments} WHERE id = $1",
            scene.id,
            *(getattr(scene, name) for name in SCENE_CHANGES),
        )
        return _row_count(status) > 0

    async def delete_scene(self, scene_id: str) -> bool:
        status = await self._conn.execute("DELETE FROM scenes WHERE id = $1", scene_id)
        return _row_count(status) > 0

    async def upsert_files(
        self, project_id: str, generation_id: str, files: Iterable[FileRecord]
    ) -> None:
        at = now_ms()
        rows = [(project_id, f.path, f.content, f.size, f.sha256, generation_id, at) for f in files]
        if not rows:
            return
        await self._conn.executemany(
            "INSERT INTO files (project_id, path, content, size, sha256, generation_id, "
            "updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (project_id, path) "
            "DO UPDATE SET content = excluded.content, size = excluded.size, "
            "sha256 = excluded.sha256, generation_id = excluded.generation_id, "
            "updated_at = excluded.updated_at",
            rows,
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
            "cursor, started_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
            session_id,
            key,
            project_id,
            generation_id,
            peer,
            user_agent,
            cursor,
            at,
        )

    async def close_session(
        self, session_id: str, last_event_id: int | None, events_sent: int, reason: str, at: int
    ) -> None:
        await self._conn.execute(
            "UPDATE stream_sessions SET ended_at = $1, last_event_id = $2, events_sent = $3, "
            "close_reason = $4 WHERE id = $5",
            at,
            last_event_id,
            events_sent,
            reason,
            session_id,
        )

    async def prune_events(self, *, keep_per_project: int | None, older_than_ms: int | None) -> int:
        """Delete old events; never those of an active generation, nor the newest one."""
        spare = (
            "(generation_id IS NULL OR generation_id NOT IN "
            f"(SELECT id FROM generations WHERE status IN {ACTIVE})) "
            "AND id < (SELECT MAX(id) FROM events)"
        )
        deleted = 0
        if older_than_ms is not None:
            status = await self._conn.execute(
                f"DELETE FROM events WHERE ts < $1 AND {spare}", older_than_ms
            )
            deleted += _row_count(status)
        if keep_per_project is not None:
            cutoffs = await self._conn.fetch(
                "SELECT p.id, (SELECT e.id FROM events e WHERE e.project_id = p.id "
                "ORDER BY e.id DESC LIMIT 1 OFFSET $1) AS cutoff FROM projects p",
                keep_per_project,
            )
            for row in cutoffs:
                if row["cutoff"] is None:
                    continue
                status = await self._conn.execute(
                    f"DELETE FROM events WHERE project_id = $1 AND id <= $2 AND {spare}",
                    row["id"],
                    row["cutoff"],
                )
                deleted += _row_count(status)
        return deleted

    async def close_open_sessions(self, reason: str, at: int) -> None:
        await self._conn.execute(
            "UPDATE stream_sessions SET ended_at = $1, close_reason = $2 WHERE ended_at IS NULL",
            at,
            reason,
        )

    # -- leases (the lock order is _LOCK_LOG's) --------------------------------------

    async def lock_log(self) -> None:
        # Read Committed: each statement sees what committed before it began, so two reads
        # of one transaction may see different states (13.2.1); holding the lock every
        # writer of generations takes makes the reads after it one state.
        await self._conn.execute(_LOCK_LOG)

    async def take_lease(self, generation_id: str, owner: str, seconds: float) -> None:
        await self._conn.execute(
            f"UPDATE generations SET owner = $2, lease_expires_at = {_LEASED_UNTIL} WHERE id = $1",
            generation_id,
            owner,
            seconds,
        )

    async def holds_lease(self, generation_id: str, owner: str) -> bool:
        await self._conn.execute(_LOCK_LOG)
        row = await self._conn.fetchrow(
            f"SELECT 1 FROM generations WHERE id = $1 AND owner = $2 AND status IN {ACTIVE} "
            "AND lease_expires_at > clock_timestamp() FOR UPDATE",
            generation_id,
            owner,
        )
        return row is not None

    async def lease_lapsed(self, generation_id: str) -> bool:
        await self._conn.execute(_LOCK_LOG)
        row = await self._conn.fetchrow(
            f"SELECT 1 FROM generations WHERE id = $1 AND status IN {ACTIVE} AND {_LAPSED} "
            "FOR UPDATE",
            generation_id,
        )
        return row is not None

    async def renew_leases(
        self, owner: str, seconds: float, generation_ids: Sequence[str]
    ) -> list[str]:
        if not generation_ids:
            return []
        await self._conn.execute(_LOCK_LOG)
        # Only a lease not yet expired is renewed: once it has, another process may be
        # ending the generation, and this one must write nothing more for it.
        rows = await self._conn.fetch(
            f"UPDATE generations SET lease_expires_at = {_LEASED_UNTIL} "
            f"WHERE id = ANY($1::text[]) AND owner = $2 AND status IN {ACTIVE} "
            "AND lease_expires_at > clock_timestamp() RETURNING id",
            list(generation_ids),
            owner,
            seconds,
        )
        held = {row["id"] for row in rows}
        return [gid for gid in generation_ids if gid not in held]

    async def request_cancel(self, generation_id: str) -> None:
        await self._conn.execute(_LOCK_LOG)
        await self._conn.execute(
            f"UPDATE generations SET cancel_requested = true WHERE id = $1 AND status IN {ACTIVE}",
            generation_id,
        )


def _row_count(status: str) -> int:
    """The count in a command tag: 'DELETE 12' is 12."""
    return int(status.rsplit(" ", 1)[-1])


async def _connect(url: str) -> asyncpg.Connection:
    """The writer's connection."""
    return await asyncpg.connect(
        url,
        timeout=CONNECT_TIMEOUT_SECONDS,
        server_settings={"idle_in_transaction_session_timeout": str(WRITER_IDLE_IN_TRANSACTION_MS)},
    )


async def _listener_connection(url: str) -> asyncpg.Connection:
    return await asyncpg.connect(
        url,
        timeout=CONNECT_TIMEOUT_SECONDS,
        server_settings={"application_name": f"{LISTENER_NAME}-{os.getpid()}"},
    )


async def _listen_until_lost(conn: asyncpg.Connection, on_commit: Callable[[], None]) -> None:
    """LISTEN on `conn`, hint once, then wait until the connection is lost (returns) or
    a check fails (raises)."""
    lost = asyncio.Event()
    conn.add_termination_listener(lambda _conn: lost.set())

    def heard(_conn: object, _pid: int, _channel: str, _payload: object) -> None:
        on_commit()

    await conn.add_listener(NOTIFY_CHANNEL, heard)
    on_commit()  # LISTEN is on from here: what committed before it, the caller reads
    while not conn.is_closed():
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(LISTEN_CHECK_SECONDS):
                await lost.wait()
        if not lost.is_set():
            await conn.fetchval("SELECT 1", timeout=LISTEN_CHECK_TIMEOUT_SECONDS)


async def _close_quietly(conn: asyncpg.Connection) -> None:
    """Close, or abort a connection that cannot say goodbye (already lost, or stuck)."""
    try:
        await conn.close(timeout=LISTEN_CHECK_TIMEOUT_SECONDS)
    except DRIVER_ERRORS:
        conn.terminate()


async def _migrate(conn: asyncpg.Connection) -> None:
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", MIGRATION_LOCK)
        await conn.execute("CREATE TABLE IF NOT EXISTS genstream_schema (version integer NOT NULL)")
        version = await conn.fetchval("SELECT version FROM genstream_schema")
        if version is None:
            await conn.execute("INSERT INTO genstream_schema (version) VALUES (0)")
            version = 0
        if version > SCHEMA_VERSION:
            raise StorageError(
                f"the database is at schema version {version}, newer than this code "
                f"({SCHEMA_VERSION}); upgrade genstream"
            )
        for number in range(version, SCHEMA_VERSION):
            await conn.execute(MIGRATIONS[number])
            await conn.execute("UPDATE genstream_schema SET version = $1", number + 1)
            log.info("database migrated to schema version %d", number + 1)
