"""The storage contract (tests/storage_contract.py), run against each backend."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from service.storage.interface import Storage
from service.storage.postgres import PostgresStorage
from service.storage.sqlite import Storage as SqliteStorage
from tests.postgres import Database
from tests.storage_contract import StorageContract


class TestSqlite(StorageContract):
    async def open_storage(self, directory: Path) -> Storage:
        return await SqliteStorage.open(str(directory / "contract.db"))


class TestPostgres(StorageContract):
    """On the session's throwaway cluster, a database of each test's own."""

    @pytest.fixture
    async def storage(self, pg_database: Database) -> AsyncIterator[Storage]:
        storage = await PostgresStorage.open(pg_database.url)
        yield storage
        await storage.close()
