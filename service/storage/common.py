"""What both backends share: the column lists and the project view their SQL is built
from, the row builders, and how a driver's exceptions become StorageError.

The statements themselves stay in each backend (placeholders, types and locks differ);
only text that is the same in both dialects lives here.
"""

from __future__ import annotations

import functools
import inspect
import re
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, Final, ParamSpec, Protocol, TypeVar

import orjson

from service.protocol import ACTIVE_STATUSES
from service.storage.interface import (
    DocumentRow,
    GenerationRow,
    PersonaRow,
    ProjectRow,
    SceneRow,
    StorageError,
)

# The active statuses as an SQL list: ('pending', 'running').
ACTIVE: Final = "(" + ", ".join(f"'{status}'" for status in sorted(ACTIVE_STATUSES)) + ")"

GENERATION_COLUMNS: Final = (
    "id, project_id, client_request_id, prompt, image_urls, status, stage, progress, "
    "error_code, error_message, retryable, usage, timings, provider, model, "
    "user_message_id, assistant_message_id, first_event_id, created_at, started_at, finished_at, "
    "pipeline, inputs"
)
PROJECT_COLUMNS: Final = "id, name, created_at, pipeline"
DOCUMENT_COLUMNS: Final = "id, project_id, title, content, created_at"
PERSONA_COLUMNS: Final = "project_id, visitor_id, pain_points, interests, visits, updated_at"
SCENE_COLUMNS: Final = (
    "id, project_id, position, title, description, duration_ms, created_at, updated_at"
)
# An upsert's update of a persona: every column but the key, from the row it would insert.
PERSONA_CHANGES: Final = ", ".join(
    f"{name} = excluded.{name}" for name in ("pain_points", "interests", "visits", "updated_at")
)
# What update_scene may change: the rest (id, project, created_at) a scene keeps.
SCENE_CHANGES: Final = ("position", "title", "description", "duration_ms", "updated_at")
# A search's query, cut to this many words: a search is of a question, not of a document.
MAX_SEARCH_TERMS: Final = 32
# Words of a search: letters and digits, in any script (what both full-text engines index
# as words); anything else in the query is a separator, never syntax.
_WORD: Final = re.compile(r"\w+")
# The words a snippet holds around its matches.
SNIPPET_WORDS: Final = 24
MESSAGE_COLUMNS: Final = (
    "id, project_id, generation_id, role, status, content, created_at, updated_at"
)
EVENT_COLUMNS: Final = "id, project_id, generation_id, type, ts, data"
# A project with its active generation and its newest event id, as one statement: one
# read, so one snapshot (a view pieced from several reads could mix two moments).
PROJECT_VIEW: Final = (
    "SELECT p.id AS p_id, p.name AS p_name, p.created_at AS p_created_at, "
    "p.pipeline AS p_pipeline, "
    "(SELECT COALESCE(MAX(e.id), 0) FROM events e WHERE e.project_id = p.id) AS p_last_event_id, "
    + ", ".join(f"g.{column.strip()}" for column in GENERATION_COLUMNS.split(","))
    + " FROM projects p LEFT JOIN generations g ON g.id = (SELECT a.id FROM generations a "
    f"WHERE a.project_id = p.id AND a.status IN {ACTIVE} "
    "ORDER BY a.created_at DESC LIMIT 1)"
)


class Columns(Protocol):
    """A fetched row, read by column name (sqlite3.Row and asyncpg.Record both are)."""

    def __getitem__(self, key: str) -> Any: ...


def project_row(row: Columns) -> ProjectRow:
    """A row of PROJECT_VIEW. The generation's columns are NULL when the LEFT JOIN found
    no active generation."""
    return ProjectRow(
        id=row["p_id"],
        name=row["p_name"],
        created_at=row["p_created_at"],
        active_generation=generation_row(row) if row["id"] is not None else None,
        last_event_id=row["p_last_event_id"],
        pipeline=row["p_pipeline"],
    )


def generation_row(row: Columns) -> GenerationRow:
    """The columns of GENERATION_COLUMNS, the JSON ones decoded."""
    retryable = row["retryable"]
    return GenerationRow(
        id=row["id"],
        project_id=row["project_id"],
        client_request_id=row["client_request_id"],
        prompt=row["prompt"],
        image_urls=tuple(orjson.loads(row["image_urls"])),
        status=row["status"],
        stage=row["stage"],
        progress=row["progress"],
        error_code=row["error_code"],
        error_message=row["error_message"],
        retryable=None if retryable is None else bool(retryable),
        usage=orjson.loads(row["usage"]) if row["usage"] is not None else None,
        timings=orjson.loads(row["timings"]) if row["timings"] is not None else None,
        provider=row["provider"],
        model=row["model"],
        user_message_id=row["user_message_id"],
        assistant_message_id=row["assistant_message_id"],
        first_event_id=row["first_event_id"],
        created_at=row["created_at"],
        started_at=row["started_at"],
        finished_at=row["finished_at"],
        pipeline=row["pipeline"],
        inputs=orjson.loads(row["inputs"]),
    )


def document_row(row: Columns) -> DocumentRow:
    return DocumentRow(**{name: row[name] for name in DocumentRow.__slots__})


def scene_row(row: Columns) -> SceneRow:
    return SceneRow(**{name: row[name] for name in SceneRow.__slots__})


def persona_row(row: Columns) -> PersonaRow:
    """The columns of PERSONA_COLUMNS, the JSON lists decoded."""
    return PersonaRow(
        project_id=row["project_id"],
        visitor_id=row["visitor_id"],
        pain_points=tuple(orjson.loads(row["pain_points"])),
        interests=tuple(orjson.loads(row["interests"])),
        visits=row["visits"],
        updated_at=row["updated_at"],
    )


def persona_values(persona: PersonaRow) -> tuple[Any, ...]:
    """The values of PERSONA_COLUMNS, in order; the lists as JSON text (SQLite keeps
    it as it is, PostgreSQL's jsonb takes it)."""
    return (
        persona.project_id,
        persona.visitor_id,
        orjson.dumps(list(persona.pain_points)).decode(),
        orjson.dumps(list(persona.interests)).decode(),
        persona.visits,
        persona.updated_at,
    )


def search_terms(query: str) -> list[str]:
    """The words of an untrusted query, lowercased, each once, at most MAX_SEARCH_TERMS.
    Each backend quotes every one as a plain word of its own query language: a quote,
    `NEAR(`, `*`, `AND` or `-` in the query is a separator or a word, never an operator
    (FTS5's query syntax would otherwise refuse `"` or `NEAR(` with an error)."""
    words = dict.fromkeys(word.lower() for word in _WORD.findall(query))
    return list(words)[:MAX_SEARCH_TERMS]


def any_of_quoted(terms: list[str], separator: str) -> str:
    """`"a" OR "b"`: each term a quoted string (a word of \\w characters holds no quote,
    so nothing needs escaping), any of them matching. Both FTS5 ("a string enclosed in
    double quotes", https://www.sqlite.org/fts5.html#fts5_strings) and websearch_to_tsquery
    ("text inside quote marks", https://www.postgresql.org/docs/15/textsearch-controls.html)
    read a quoted word as that word, and `OR` / `or` between them as any of them."""
    return f" {separator} ".join(f'"{term}"' for term in terms)


_P = ParamSpec("_P")
_R = TypeVar("_R")
_C = TypeVar("_C", bound=type)
# The backend's own rule: a driver exception it recognises as a database failure, as
# the StorageError to raise instead; None for one that is not the database's.
Translate = Callable[[BaseException], StorageError | None]


def translating(translate: Translate) -> Callable[[_C], _C]:
    """A class decorator: every public coroutine of the class raises what `translate`
    makes of a driver's exception, so the driver's exceptions stop at the backend's
    boundary and no caller imports the driver."""

    def wrap(method: Callable[_P, Awaitable[_R]]) -> Callable[_P, Coroutine[Any, Any, _R]]:
        @functools.wraps(method)
        async def translated(*args: _P.args, **kwargs: _P.kwargs) -> _R:
            try:
                return await method(*args, **kwargs)
            except StorageError:
                raise
            except Exception as exc:
                error = translate(exc)
                if error is None:
                    raise
                raise error from exc

        return translated

    def decorate(cls: _C) -> _C:
        for name, member in list(vars(cls).items()):
            # Plain functions only: a classmethod (open) translates for itself.
            public = not name.startswith("_") and inspect.isfunction(member)
            if public and inspect.iscoroutinefunction(member):
                setattr(cls, name, wrap(member))
        return cls

    return decorate
