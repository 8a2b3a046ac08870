"""A throwaway PostgreSQL cluster for the tests: Debian's binaries, no system service.

initdb into a temporary folder, the postmaster on a free loopback port (TCP only, no
Unix socket), started once per test session when a test first asks for it (the
`postgres` fixture in conftest.py) and stopped and removed after the session. Each test
gets a database of its own (`postgres_url`), so no test sees another's rows.

initdb and postgres refuse to run as root, and the tests run as root in CI: then the
cluster runs as `nobody`, its folder chowned to it (setpriv, util-linux, as in every
Debian: no PAM session, no login shell).
"""

from __future__ import annotations

import asyncio
import itertools
import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path

import asyncpg

from tests.net import LOOPBACK, free_port

SUPERUSER = "genstream"
ADMIN_DATABASE = "postgres"
UNPRIVILEGED_USER = "nobody"
# Debian installs each major version's server binaries beside the others.
DEBIAN_BINARIES = Path("/usr/lib/postgresql")
START_TIMEOUT_SECONDS = 30
# What every cluster here needs: TCP on loopback alone, room for several processes' pools.
BASE_OPTIONS = (
    f"-c listen_addresses={LOOPBACK}",
    "-c unix_socket_directories=''",
    "-c max_connections=300",
)
# Settings for a cluster whose data may be lost: a test's database never outlives it.
# fsync and full-page writes off make CREATE DATABASE and commits cheap on a shared disk.
SERVER_OPTIONS = (
    *BASE_OPTIONS,
    "-c fsync=off",
    "-c synchronous_commit=off",
    "-c full_page_writes=off",
)
_database_numbers = itertools.count(1)


class PostgresMissing(Exception):
    """No PostgreSQL server binaries on this machine (`make test` installs them as root)."""


def find_binaries() -> Path:
    """The folder holding initdb, pg_ctl and postgres: `pg_config --bindir` when it
    names one, else the newest of Debian's /usr/lib/postgresql/*/bin, else the PATH."""
    candidates: list[Path] = []
    pg_config = shutil.which("pg_config")
    if pg_config is not None:
        found = subprocess.run(
            [pg_config, "--bindir"], capture_output=True, text=True, check=False
        ).stdout.strip()
        if found:
            candidates.append(Path(found))
    candidates += sorted(
        DEBIAN_BINARIES.glob("*/bin"),
        key=lambda path: int(path.parent.name) if path.parent.name.isdigit() else 0,
        reverse=True,
    )
    on_path = shutil.which("initdb")
    if on_path is not None:
        candidates.append(Path(on_path).parent)
    for folder in candidates:
        if all(os.access(folder / name, os.X_OK) for name in ("initdb", "pg_ctl", "postgres")):
            return folder
    raise PostgresMissing(
        "no PostgreSQL server binaries (initdb, pg_ctl, postgres): `make test` installs "
        "Debian's postgresql package when run as root"
    )


class Cluster:
    """One postmaster and its data folder; `url(database)` to reach it."""

    def __init__(
        self,
        binaries: Path,
        root: Path,
        port: int,
        as_user: list[str],
        options: Sequence[str] = SERVER_OPTIONS,
    ) -> None:
        self.binaries = binaries
        self.root = root
        self.data = root / "data"
        self.log = root / "postgres.log"
        self.port = port
        self._as_user = as_user  # the command prefix that drops root, or nothing
        self._options = options  # the postmaster's -c settings

    @classmethod
    def create(cls, options: Sequence[str] = SERVER_OPTIONS) -> Cluster:
        """initdb into a new temporary folder (started by `start`), for a postmaster run
        with `options` (the benchmark's keep fsync on)."""
        binaries = find_binaries()
        root = Path(tempfile.mkdtemp(prefix="genstream-pg-"))
        as_user: list[str] = []
        if os.getuid() == 0:
            user = pwd.getpwnam(UNPRIVILEGED_USER)
            os.chown(root, user.pw_uid, user.pw_gid)
            as_user = [
                "setpriv",
                f"--reuid={user.pw_uid}",
                f"--regid={user.pw_gid}",
                "--clear-groups",
                "--",
            ]
        cluster = cls(binaries, root, free_port(), as_user, options)
        try:
            cluster._run(
                "initdb",
                f"--pgdata={cluster.data}",
                f"--username={SUPERUSER}",
                "--auth=trust",
                "--locale=C",
                "--encoding=UTF8",
                "--no-sync",
                "--no-instructions",
            )
        except BaseException:
            shutil.rmtree(root, ignore_errors=True)
            raise
        return cluster

    def url(self, database: str = ADMIN_DATABASE) -> str:
        return f"postgresql://{SUPERUSER}@{LOOPBACK}:{self.port}/{database}"

    def _run(self, program: str, *args: str) -> None:
        command = [*self._as_user, str(self.binaries / program), *args]
        # cwd: the cluster's own folder, which its user can enter (not root's cwd).
        done = subprocess.run(command, cwd=self.root, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise RuntimeError(
                f"{program} exited with {done.returncode}: {done.stderr or done.stdout}"
                f"\n{self.log_tail()}"
            )

    def log_tail(self, lines: int = 20) -> str:
        if not self.log.exists():
            return ""
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])

    # -- the postmaster: pg_ctl -w waits until it accepts connections, or has stopped --

    def start(self) -> None:
        self._run(
            "pg_ctl",
            "start",
            "--wait",
            f"--timeout={START_TIMEOUT_SECONDS}",
            f"--pgdata={self.data}",
            f"--log={self.log}",
            f"--options=-p {self.port} {' '.join(self._options)}",
        )

    def stop(self) -> None:
        # fast: roll back open transactions and disconnect clients, then a clean shutdown.
        self._run(
            "pg_ctl",
            "stop",
            "--wait",
            f"--timeout={START_TIMEOUT_SECONDS}",
            "--mode=fast",
            f"--pgdata={self.data}",
        )

    def remove(self) -> None:
        """Stop if running, and delete the folder."""
        if (self.data / "postmaster.pid").exists():
            self.stop()
        shutil.rmtree(self.root, ignore_errors=True)

    async def restart(self) -> None:
        """Stop (every connection dropped) and start again on the same port."""
        await asyncio.to_thread(self.stop)
        await asyncio.to_thread(self.start)

    @asynccontextmanager
    async def down(self) -> AsyncIterator[None]:
        """PostgreSQL stopped for the block's duration (unreachable), then started again."""
        await asyncio.to_thread(self.stop)
        try:
            yield
        finally:
            await asyncio.to_thread(self.start)

    # -- databases and backends ----------------------------------------------------------

    async def _admin(self) -> asyncpg.Connection:
        return await asyncpg.connect(self.url(ADMIN_DATABASE))

    async def create_database(self, template: str = "template0") -> str:
        """A new, empty database (a copy of `template`); its name."""
        name = f"test_{os.getpid()}_{next(_database_numbers)}"
        admin = await self._admin()
        try:
            await admin.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template}"')
        finally:
            await admin.close()
        return name

    async def drop_database(self, name: str) -> None:
        admin = await self._admin()
        try:
            # FORCE (PostgreSQL 13): ends what a test left connected instead of failing.
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()

    async def terminate_backends(self, database: str) -> int:
        """pg_terminate_backend every connection to `database` (a dropped connection, as a
        network cut or an operator would make it); how many there were."""
        admin = await self._admin()
        try:
            ended = await admin.fetchval(
                "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE datname = $1 AND pid <> pg_backend_pid()",
                database,
            )
        finally:
            await admin.close()
        return int(ended)

    async def backends(self, database: str, waiting_for_a_lock: bool = False) -> int:
        """How many client connections `database` has now (only those waiting for a lock,
        a row lock held by another transaction among them, with `waiting_for_a_lock`)."""
        admin = await self._admin()
        try:
            count = await admin.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = $1 "
                "AND backend_type = 'client backend' AND pid <> pg_backend_pid() "
                "AND (NOT $2 OR wait_event_type = 'Lock')",
                database,
                waiting_for_a_lock,
            )
        finally:
            await admin.close()
        return int(count)


class Database:
    """One test's own database in the session's cluster."""

    def __init__(self, cluster: Cluster, name: str) -> None:
        self.cluster = cluster
        self.name = name
        self.url = cluster.url(name)

    async def terminate_backends(self) -> int:
        return await self.cluster.terminate_backends(self.name)

    async def backends(self, waiting_for_a_lock: bool = False) -> int:
        return await self.cluster.backends(self.name, waiting_for_a_lock)
