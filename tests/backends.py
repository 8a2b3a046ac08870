"""The storage backend a test's servers run on, and the test's own reads of their database.

A module whose tests hold for every backend marks them `pytest.mark.backends`: each then
runs once per backend (test_x[sqlite], test_x[postgres]), its servers (make_server, gs,
`store.process_settings()` for a child) on that backend, each postgres run on a database
of its own. A test of an SQLite mechanism (a file lock, RLIMIT_FSIZE, a read-only file,
the WAL file) marks itself `pytest.mark.sqlite_only("why")` instead: it runs once, as
test_x[sqlite], and the reason is in the marker. Unmarked tests run on SQLite, as before.
"""

from __future__ import annotations

import re
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypedDict

import asyncpg

BACKENDS = ("sqlite", "postgres")
SQLITE_FILE = "genstream.db"

# One `?` placeholder, as the tests write them (SQLite's), to become asyncpg's $n.
_PLACEHOLDER = re.compile(r"\?")


class ProcessStorage(TypedDict, total=False):
    """server_process's [storage] options (section_key=value) for a child server."""

    storage_path: str
    storage_backend: str
    storage_url: str


@dataclass(frozen=True)
class Store:
    """Where a test's servers keep their data: an SQLite file under the test's tmp_path,
    or a PostgreSQL database of the test's own (`url`)."""

    backend: str
    path: Path
    url: str = ""

    @property
    def postgres(self) -> bool:
        return self.backend == "postgres"

    def settings(self) -> dict[str, Any]:
        """The [storage] section a server in this process gets."""
        if self.postgres:
            return {"backend": "postgres", "url": self.url}
        return {"path": str(self.path)}

    def process_settings(self) -> ProcessStorage:
        """The same for a child server: server_process's section_key=value options."""
        if self.postgres:
            return {"storage_backend": "postgres", "storage_url": self.url}
        return {"storage_path": str(self.path)}

    async def rows(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        """Every row of one query (written with SQLite's `?` placeholders), as tuples, on
        a connection of the test's own beside the server's."""
        if not self.postgres:
            db = sqlite3.connect(self.path)
            try:
                with db:
                    return [tuple(row) for row in db.execute(sql, params).fetchall()]
            finally:
                db.close()
        numbers = iter(range(1, len(params) + 1))
        query = _PLACEHOLDER.sub(lambda _: f"${next(numbers)}", sql)
        connection = await asyncpg.connect(self.url)
        try:
            return [tuple(record) for record in await connection.fetch(query, *params)]
        finally:
            await connection.close()

    async def value(self, sql: str, params: tuple[Any, ...] = ()) -> Any:
        """The one value of a query that gives one row of one column."""
        ((value,),) = await self.rows(sql, params)
        return value

    async def count(self, table: str) -> int:
        """How many rows `table` holds (a table name the test wrote, never input)."""
        return int(await self.value(f"SELECT COUNT(*) FROM {table}"))


# A killed server's generations stay `running` on postgres until their lease lapses
# (another process may still hold them); a test that kills one gives its servers this
# short a lease, and waits for the end (tests/helpers.py, until_ended).
SHORT_LEASE_SECONDS = 1.0
