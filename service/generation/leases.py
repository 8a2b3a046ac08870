"""Leases: which process runs a generation, while several processes share one database.

Each process takes a new identity at start (`identity()`; a restarted process is
another owner). A generation it creates is leased to it (`Tx.take_lease`) until
`generation.lease_seconds` from now; the process renews its leases every third of
that (`LeaseKeeper`). A process that stops renewing (killed, paused, cut off from the
database) loses them once they expire: every other process looks for lapsed leases
as often and ends those generations as failed, `interrupted`, as a start used to.

**Fencing.** Every write of a running generation (its events, its row, its end) is
checked in the transaction that makes it: the owner's writes carry `owner_guard`, which
locks the generation's row and requires the lease held and unexpired; a reaper's end
carries `lapsed_guard`, which locks the same row and requires it expired. The row lock
makes the two take turns (storage/postgres.py, `_LOCK_LOG`), so once a reaper's end has
committed, a paused owner that wakes finds its lease gone: its write raises `Fenced`
and writes nothing, and its task ends quietly. A lease is renewed only while unexpired,
so a process that wakes past its lease never gets it back.

Where one process owns the database (SQLite, `Storage.shared` false) there are no
leases: no guard, no keeper, and a start recovers every active generation, as before.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import uuid
from collections.abc import Awaitable, Callable, Sequence
from typing import Final, TypeVar

from service.errors import JournalRefused
from service.eventlog.journal import Check, Emit, Journal, TxFunction
from service.storage.interface import Storage, StorageError, Tx

# The lifecycle's logger: these lines are about its generations.
log = logging.getLogger("service.generation.lifecycle")

T = TypeVar("T")

# How often the owner of running generations reads their cancel flags: a cancel asked
# on another process reaches the run within this (plus a commit).
CANCEL_POLL_SECONDS: Final = 0.2
# Leases are renewed, and lapsed ones looked for, this many times a lease.
RENEWALS_PER_LEASE: Final = 3


class Fenced(Exception):
    """This process no longer holds the generation's lease: it writes nothing more for it."""

    def __init__(self, generation_id: str) -> None:
        super().__init__(f"generation {generation_id}: this process no longer holds its lease")
        self.generation_id = generation_id


def identity() -> str:
    """A new owner name for this process: the host and pid say where, the random part
    tells a restarted process (same pid, another container) from the one before."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:12]}"


def owner_guard(generation_id: str, owner: str) -> Check:
    """The check on each write `owner` makes for a generation it runs."""

    async def check(tx: Tx) -> None:
        if not await tx.holds_lease(generation_id, owner):
            raise Fenced(generation_id)

    return check


def lapsed_guard(generation_id: str) -> Check:
    """The check on another process's end of a generation: no owner holds it any more
    (an owner that renewed in between, or another reaper that ended it first, wins)."""

    async def check(tx: Tx) -> None:
        if not await tx.lease_lapsed(generation_id):
            raise Fenced(generation_id)

    return check


def guarded(guard: Check | None, fn: TxFunction[T]) -> TxFunction[T]:
    """`fn`, run only once `guard` (if any) passed in the same transaction."""
    if guard is None:
        return fn

    async def run(tx: Tx, emit: Emit) -> T:
        await guard(tx)
        return await fn(tx, emit)

    return run


class LeaseKeeper:
    """A process's side of the leases: renew its own, find the others' lapsed ones, and
    pick up cancels asked on other processes. One task, from `start` to `close`."""

    def __init__(
        self,
        storage: Storage,
        journal: Journal,
        *,
        owner: str,
        seconds: float,
        held: Callable[[], Sequence[str]],
        lost: Callable[[str], None],
        cancel: Callable[[str], None],
        reap: Callable[[], Awaitable[object]],
    ) -> None:
        self._storage = storage
        self._journal = journal
        self.owner = owner
        self.seconds = seconds
        self._held = held  # the generations this process runs
        self._lost = lost  # one of them is no longer ours: stop it, writing nothing
        self._cancel = cancel  # one of them was cancelled on another process
        self._reap = reap  # end the lapsed generations of others
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._keep(), name="leases")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def take(self, tx: Tx, generation_id: str) -> None:
        """Lease a generation this process just created, in its creating transaction."""
        await tx.take_lease(generation_id, self.owner, self.seconds)

    async def _keep(self) -> None:
        loop = asyncio.get_running_loop()
        every = self.seconds / RENEWALS_PER_LEASE
        due = loop.time()
        while True:
            try:
                if loop.time() >= due:
                    due = loop.time() + every
                    await self._renew()
                    await self._reap()
                if self._held():
                    for gid in await self._storage.cancel_requests(self.owner):
                        self._cancel(gid)
            except (JournalRefused, StorageError) as exc:
                # The database is away: leases run out if it stays away past them, and
                # then the runs are fenced; until then, try again.
                log.warning("keeping generation leases failed: %s", exc)
            await asyncio.sleep(min(CANCEL_POLL_SECONDS, every))

    async def _renew(self) -> None:
        held = list(self._held())
        if not held:
            return

        async def renew(tx: Tx, emit: Emit) -> list[str]:
            return await tx.renew_leases(self.owner, self.seconds, held)

        for gid in await self._journal.transact(renew):
            log.warning("generation %s: its lease expired before it was renewed", gid)
            self._lost(gid)
