"""The storage contract (tests/storage_contract.py), run against each backend."""

from __future__ import annotations

from pathlib import Path

from service.storage.interface import Storage
from service.storage.sqlite import Storage as SqliteStorage
from tests.storage_contract import StorageContract


class TestSqlite(StorageContract):
    async def open_storage(self, directory: Path) -> Storage:
        return await SqliteStorage.open(str(directory / "contract.db"))
