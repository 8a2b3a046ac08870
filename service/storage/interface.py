"""What the rest of the service asks of a storage backend, as Protocols.

The journal, retention and the web layer type against these, never against a backend
(import-linter holds the event log to it), so a second backend is one more module that
satisfies them. A backend translates its driver's exceptions into StorageError at its
boundary: the journal tells a database failure (the whole batch fails) from a caller's
own mistake (that job alone fails) by that one type.

The reads return rows: frozen dataclasses of what is stored, its JSON columns decoded
into Python values. What the API makes of them (a project's "generating" or "idle", a
generation's error object) is the web layer's (service/web/views.py).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, Protocol, runtime_checkable

from service.eventlog.event import Encoded, Event
from service.files import FileRecord

# The pipeline of a generation stored before pipelines existed, and of an insert that
# names none: the migrations give older rows this one.
DEFAULT_PIPELINE: Final = "code"


class StorageError(Exception):
    """The database could not do what was asked (busy, full, read-only, corrupt)."""


class Duplicate(StorageError):
    """A write a uniqueness rule refused where another process's commit got there first
    (the same client_request_id, a second active generation in a project). The database
    refused it, but the database is fine: the journal fails the job that met it alone,
    its savepoint undone, and the caller reads again to give one process's answer."""

    def __init__(self, constraint: str, message: str) -> None:
        super().__init__(message)
        self.constraint = constraint


@dataclass(frozen=True, slots=True)
class GenerationRow:
    id: str
    project_id: str
    client_request_id: str | None
    prompt: str
    image_urls: tuple[str, ...]
    status: str
    stage: str | None
    progress: int
    # How it failed: all three None unless it did (error_code set, the rest with it).
    error_code: str | None
    error_message: str | None
    retryable: bool | None
    usage: dict[str, Any] | None
    timings: dict[str, Any] | None
    provider: str
    model: str
    user_message_id: str
    assistant_message_id: str
    first_event_id: int
    created_at: int
    started_at: int | None
    finished_at: int | None
    pipeline: str  # the name of the pipeline that runs it ('code' for every older one)
    inputs: dict[str, Any]  # the submit's inputs object, as validated ({} when none)


@dataclass(frozen=True, slots=True)
class ProjectRow:
    """A project with its active generation and its newest event id, read at one moment."""

    id: str
    name: str
    created_at: int
    active_generation: GenerationRow | None
    last_event_id: int  # 0 before its first event
    pipeline: str | None  # its default pipeline; None: the config's


@dataclass(frozen=True, slots=True)
class MessageRow:
    """A row of messages, its columns in the order the messages API shows them."""

    id: str
    project_id: str
    generation_id: str | None
    role: str
    status: str
    content: str
    created_at: int
    updated_at: int


@dataclass(frozen=True, slots=True)
class FileInfo:
    """A project's file without its content, as a listing shows it."""

    path: str
    size: int  # UTF-8 bytes
    sha256: str
    generation_id: str  # the generation that last wrote it
    updated_at: int


@dataclass(frozen=True, slots=True)
class FileRow:
    """One project file with its content (service/files.FileRecord is the content alone)."""

    path: str
    content: str
    size: int
    sha256: str
    generation_id: str
    updated_at: int


@dataclass(frozen=True, slots=True)
class DocumentRow:
    """A document of a project's knowledge base (the page pipeline searches them)."""

    id: str
    project_id: str
    title: str
    content: str
    created_at: int


@dataclass(frozen=True, slots=True)
class DocumentHit:
    """A document a search found: a snippet of it around the matched words, and its
    rank (higher is better; comparable within one search's hits only)."""

    document_id: str
    title: str
    snippet: str
    rank: float


@dataclass(frozen=True, slots=True)
class PersonaRow:
    """What a project knows of one visitor, kept across their questions."""

    project_id: str
    visitor_id: str
    pain_points: tuple[str, ...]
    interests: tuple[str, ...]
    visits: int
    updated_at: int


@dataclass(frozen=True, slots=True)
class SceneRow:
    """A scene of a project's video (the scenes pipeline edits them)."""

    id: str
    project_id: str
    position: int
    title: str
    description: str
    duration_ms: int
    created_at: int
    updated_at: int


class Tx(Protocol):
    """Statements run inside the journal writer's open transaction."""

    async def begin(self) -> None: ...
    async def commit(self) -> None: ...
    async def rollback(self) -> None: ...
    async def savepoint(self) -> None: ...
    async def release(self) -> None: ...
    async def rollback_to_savepoint(self) -> None: ...

    async def insert_events(self, encoded: Sequence[Encoded]) -> list[Event]:
        """Insert events, giving each its id: strictly increasing in the order given,
        and in commit order within a project. Returns them sealed with those ids."""
        ...

    async def insert_project(
        self, project_id: str, name: str, created_at: int, *, pipeline: str | None = None
    ) -> None: ...
    async def set_project_pipeline(self, project_id: str, pipeline: str | None) -> None:
        """Set (or, with None, clear) a project's default pipeline."""
        ...

    async def project_exists(self, project_id: str) -> bool: ...
    async def insert_message(self, message: MessageRow) -> None: ...
    async def message(self, message_id: str) -> MessageRow | None: ...
    async def update_message(self, message_id: str, status: str, content: str | None) -> None: ...
    async def generation_by_request(
        self, project_id: str, client_request_id: str
    ) -> GenerationRow | None: ...
    async def active_generation(self, project_id: str) -> GenerationRow | None: ...
    async def generation(self, generation_id: str) -> GenerationRow | None: ...
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
    ) -> None: ...
    async def update_generation(self, generation_id: str, **fields: Any) -> None: ...

    # The knowledge base, personas and scenes: the pipelines' own state, written in the
    # same transaction as the events that tell of it.
    async def insert_document(self, document: DocumentRow) -> None: ...
    async def delete_document(self, project_id: str, document_id: str) -> bool:
        """Delete it (and its words from the search); False when there was none."""
        ...

    async def persona(self, project_id: str, visitor_id: str) -> PersonaRow | None: ...
    async def upsert_persona(self, persona: PersonaRow) -> None:
        """Insert the persona, or replace the stored one of that (project, visitor)."""
        ...

    async def scene(self, scene_id: str) -> SceneRow | None: ...
    async def insert_scene(self, scene: SceneRow) -> None: ...
    async def update_scene(self, scene: SceneRow) -> bool:
        """Store position, title, description, duration_ms and updated_at of the scene
        with this id (its project and created_at stay); False when there is none."""
        ...

    async def delete_scene(self, scene_id: str) -> bool:
        """False when there was none."""
        ...

    async def upsert_files(
        self, project_id: str, generation_id: str, files: Iterable[FileRecord]
    ) -> None: ...
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
    ) -> None: ...
    async def close_session(
        self, session_id: str, last_event_id: int | None, events_sent: int, reason: str, at: int
    ) -> None: ...
    async def prune_events(
        self, *, keep_per_project: int | None, older_than_ms: int | None
    ) -> int: ...
    async def close_open_sessions(self, reason: str, at: int) -> None: ...

    # Leases (generation/leases.py): who runs a generation, while several processes share
    # the database. Each check locks the generation's row until the transaction ends, so
    # an owner's write and another process's end of it take turns. Where one process
    # owns the database (SQLite, `Storage.shared` false) it holds every lease: no-ops.
    async def lock_log(self) -> None:
        """Take, now, the lock every writer of events takes and holds to its commit: the
        reads after it see every commit before it, and no other commits until this
        transaction ends (a submit's checks, consistent across processes)."""
        ...

    async def take_lease(self, generation_id: str, owner: str, seconds: float) -> None: ...
    async def holds_lease(self, generation_id: str, owner: str) -> bool:
        """Active, owned by `owner`, its lease not expired."""
        ...

    async def lease_lapsed(self, generation_id: str) -> bool:
        """Active and its lease expired: no live process runs it."""
        ...

    async def renew_leases(
        self, owner: str, seconds: float, generation_ids: Sequence[str]
    ) -> list[str]:
        """Extend `owner`'s leases on these generations; returns those it no longer holds."""
        ...

    async def request_cancel(self, generation_id: str) -> None:
        """Flag an active generation for its owner to cancel (cancel_requests)."""
        ...


class Reads(Protocol):
    """The reads: each sees every event published before it was issued."""

    async def max_event_id(self) -> int: ...
    async def project_exists(self, project_id: str) -> bool: ...
    async def project(self, project_id: str) -> ProjectRow | None: ...
    async def projects(self) -> list[ProjectRow]: ...
    async def generation(self, generation_id: str) -> GenerationRow | None: ...
    async def active_generation_ids(self) -> list[str]: ...
    async def messages(self, project_id: str) -> list[MessageRow]: ...
    async def files(self, project_id: str) -> list[FileInfo]: ...
    async def file(self, project_id: str, path: str) -> FileRow | None: ...
    async def file_contents(self, project_id: str) -> list[FileRecord]: ...
    async def events_after(
        self, project_id: str, after: int, limit: int, generation_id: str | None = None
    ) -> list[Event]: ...
    async def streamed_text(self, generation_id: str) -> str: ...
    async def documents(self, project_id: str) -> list[DocumentRow]:
        """A project's documents, oldest first."""
        ...

    async def document(self, project_id: str, document_id: str) -> DocumentRow | None: ...
    async def search_documents(self, project_id: str, query: str, limit: int) -> list[DocumentHit]:
        """A project's documents that hold any word of `query` (any text: it is taken as
        words, never as the database's query syntax), best first; [] when it has none."""
        ...

    async def persona(self, project_id: str, visitor_id: str) -> PersonaRow | None: ...
    async def scenes(self, project_id: str) -> list[SceneRow]:
        """A project's scenes by position (then by id)."""
        ...

    async def scene(self, scene_id: str) -> SceneRow | None: ...
    async def lapsed_generation_ids(self) -> list[str]:
        """Active generations whose lease expired (or that never had one), oldest first."""
        ...

    async def cancel_requests(self, owner: str) -> list[str]:
        """`owner`'s active generations that another process asked to cancel."""
        ...


class Storage(Reads, Protocol):
    """A backend: the reads, and the writes only the journal's writer loop makes."""

    # Several processes may write this database (PostgreSQL): generations carry leases.
    @property
    def shared(self) -> bool: ...
    def transaction(self) -> Tx: ...
    async def commit_events(self, encoded: Sequence[Encoded]) -> list[Event]:
        """Insert events as one transaction of their own, outside any Tx, giving ids as
        insert_events does."""
        ...

    async def close(self) -> None: ...


@runtime_checkable
class SharedLog(Reads, Protocol):
    """A log several processes write (PostgreSQL): what eventlog/feed.py reads it by.

    Its ids are dense and commit in id order across the whole log, so once the head
    (`max_event_id`) is H, every event up to H can be read."""

    async def events_since(
        self, after: int, upto: int, project_ids: Sequence[str], limit: int
    ) -> list[Event]:
        """Events with after < id <= upto of those projects, in id order, up to limit."""
        ...

    async def listen(self, on_commit: Callable[[], None]) -> None:
        """Call `on_commit` after another process commits events, and after a lost
        connection to the database is back (a commit may have gone unheard); runs
        until cancelled. Only a hint: the caller reads the log to learn what it is."""
        ...
