"""Storage: the backends (sqlite.py, postgres.py; every SQL statement, the migrations)
behind interface.py, and `open_storage`, which opens the one the settings name."""

from __future__ import annotations

from service.config import StorageSettings, redacted
from service.storage.interface import Storage


async def open_storage(settings: StorageSettings) -> Storage:
    """Open `storage.backend`; a database that cannot be opened or reached is a
    StorageError saying which (the url's password hidden). Each backend is imported only
    when chosen, so SQLite's users never load asyncpg."""
    if settings.backend == "postgres":
        from service.storage.interface import StorageError
        from service.storage.postgres import PostgresStorage

        if not settings.url:
            raise StorageError(
                "storage.backend is postgres but storage.url is empty: set "
                "GENSTREAM_STORAGE_URL (postgresql://user@host:5432/database)"
            )
        return await PostgresStorage.open(settings.url, settings.pool_size)
    from service.storage.sqlite import Storage as SqliteStorage

    return await SqliteStorage.open(settings.path, settings.busy_timeout_ms, settings.readers)


def location(settings: StorageSettings) -> str:
    """Where the storage is, as an error may say it: the SQLite file, or the url."""
    return redacted(settings.url) if settings.backend == "postgres" else settings.path
