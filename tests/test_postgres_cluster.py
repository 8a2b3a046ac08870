"""The tests' throwaway PostgreSQL (tests/postgres.py): a database per test, backends
terminated, the cluster restarted; what the postgres backend's tests build on."""

from __future__ import annotations

import asyncpg
import pytest

from tests.helpers import wait_until
from tests.postgres import Cluster, Database


async def test_each_test_gets_a_database_of_its_own(
    postgres: Cluster, pg_database: Database
) -> None:
    other = await postgres.create_database()
    try:
        mine = await asyncpg.connect(pg_database.url)
        theirs = await asyncpg.connect(postgres.url(other))
        try:
            await mine.execute("CREATE TABLE t (n int); INSERT INTO t VALUES (1)")
            assert await mine.fetchval("SELECT n FROM t") == 1
            with pytest.raises(asyncpg.UndefinedTableError):
                await theirs.fetchval("SELECT n FROM t")
        finally:
            await mine.close()
            await theirs.close()
    finally:
        await postgres.drop_database(other)
    assert postgres.url(pg_database.name).startswith("postgresql://genstream@127.0.0.1:")


async def test_terminated_backends_lose_their_connection(pg_database: Database) -> None:
    connection = await asyncpg.connect(pg_database.url)
    try:
        assert await pg_database.backends() == 1
        assert await pg_database.terminate_backends() == 1
        # asyncpg reads the server's goodbye as it comes; a query sent meanwhile can meet
        # it in any state (even InternalClientError), so wait for the drop to be seen.
        await wait_until(connection.is_closed)
        with pytest.raises(asyncpg.InterfaceError):
            await connection.fetchval("SELECT 1")
        assert await pg_database.backends() == 0
    finally:
        await connection.close()


async def test_a_restart_drops_connections_and_keeps_the_data_and_the_port(
    postgres: Cluster, pg_database: Database
) -> None:
    connection = await asyncpg.connect(pg_database.url)
    await connection.execute("CREATE TABLE kept (n int); INSERT INTO kept VALUES (7)")
    port = postgres.port
    await postgres.restart()
    await wait_until(connection.is_closed)
    with pytest.raises(asyncpg.InterfaceError):
        await connection.fetchval("SELECT 1")
    await connection.close()
    assert postgres.port == port
    again = await asyncpg.connect(pg_database.url)
    try:
        assert await again.fetchval("SELECT n FROM kept") == 7
    finally:
        await again.close()


async def test_while_down_it_is_unreachable(postgres: Cluster, pg_database: Database) -> None:
    async with postgres.down():
        with pytest.raises(OSError):  # connection refused on the loopback port
            await asyncpg.connect(pg_database.url, timeout=5)
    connection = await asyncpg.connect(pg_database.url)
    await connection.close()
