"""A generation's end, recorded once: failed or cancelled, in one transaction with its
terminal event, retried while the database refuses the write."""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import Awaitable, Callable
from typing import Final, TypeVar

from service.errors import JournalClosed, JournalRefused
from service.eventlog import event as ev
from service.eventlog.event import Draft, now_ms
from service.eventlog.journal import Emit, Journal
from service.generation import drafts
from service.generation.leases import guarded
from service.generation.providers.base import ProviderError
from service.generation.run import Run
from service.metrics import Metrics
from service.protocol import ACTIVE_STATUSES
from service.storage.interface import Tx

# The lifecycle's logger, as before the endings had a module of their own.
log = logging.getLogger("service.generation.lifecycle")

T = TypeVar("T")

# Waits between tries to record a generation's end while the database refuses writes
# (busy, full), then every 8 s until it lands or the server stops (the next start then
# finishes it as interrupted). Its streams wait for that end, with heartbeats.
END_RETRY_DELAYS: Final = (0.1, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0)


class Endings:
    """Records how generations end: at most one terminal event each, never two."""

    def __init__(self, journal: Journal, metrics: Metrics) -> None:
        self._journal = journal
        self._metrics = metrics
        # Set as the server stops (Generations.close): an end the database refuses is
        # then left to the next start, which finishes it as interrupted.
        self.closing = False

    async def fail(self, run: Run, error: ProviderError) -> None:
        payload = {"code": error.code, "message": error.message, "retryable": error.retryable}
        await self._end(
            run,
            status="failed",
            message_status="error",
            terminal=run.draft(ev.GENERATION_FAILED, **payload),
            error=error,
        )

    async def cancelled(self, run: Run) -> None:
        await self._end(
            run,
            status="cancelled",
            message_status="cancelled",
            terminal=run.draft(ev.GENERATION_CANCELLED),
            error=None,
        )

    async def _end(
        self,
        run: Run,
        *,
        status: str,
        message_status: str,
        terminal: Draft,
        error: ProviderError | None,
    ) -> None:
        # The text streamed so far stays in the event log and becomes the message.
        text = run.text
        timings = run.timings()

        async def end(tx: Tx, emit: Emit) -> bool:
            current = await tx.generation(run.generation_id)
            if current is None or current.status not in ACTIVE_STATUSES:
                return False  # already ended: one terminal event per generation, never two
            await tx.update_message(run.assistant_message_id, message_status, text)
            await tx.update_generation(
                run.generation_id,
                status=status,
                error_code=error.code if error else None,
                error_message=error.message if error else None,
                retryable=error.retryable if error else None,
                timings=timings,
                finished_at=now_ms(),
            )
            await emit(drafts.message_updated(run, message_status, text))
            await emit(terminal)
            return True

        # In a task of its own: a second cancellation of the generation's task (a cancel,
        # then shutdown) must not stop the end from being recorded.
        await _uncancellable(
            asyncio.ensure_future(self._record(run, guarded(run.guard, end), status, error))
        )

    async def _record(
        self,
        run: Run,
        end: Callable[[Tx, Emit], Awaitable[bool]],
        status: str,
        error: ProviderError | None,
    ) -> None:
        # A generation must end, or its streams wait forever: retry while the database
        # refuses the write (a full disk gets space again, a lock is released).
        for attempt in itertools.count():
            try:
                ended = await self._journal.transact(end)
            except JournalRefused as exc:
                delay = END_RETRY_DELAYS[min(attempt, len(END_RETRY_DELAYS) - 1)]
                if self.closing or isinstance(exc, JournalClosed):
                    log.error(
                        "could not record the end of generation %s (%s); the next start "
                        "finishes it as interrupted",
                        run.generation_id,
                        exc.message,
                    )
                    return
                log.warning(
                    "recording the end of generation %s failed, retrying in %g s: %s",
                    run.generation_id,
                    delay,
                    exc.message,
                )
                await asyncio.sleep(delay)
                continue
            if ended:
                code = error.code if error else ""
                self._metrics.generations.labels(status, code).inc()
                log.info("generation %s %s %s", run.generation_id, status, code)
            return


async def _uncancellable(future: asyncio.Future[T]) -> T:
    """Wait for work that must finish even while the waiting task is cancelled, however
    often; the cancellation is passed on once the work is done."""
    cancelled = False
    while not future.done():
        try:
            await asyncio.shield(future)
        except asyncio.CancelledError:
            cancelled = True
    if cancelled:
        raise asyncio.CancelledError
    return future.result()
