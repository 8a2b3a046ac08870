"""One run's steps, in the stage pipeline's order: begin, plan, generate, validate,
complete. Each state change is one transaction that carries its events; a step that
fails raises, and the lifecycle records how the run ended (endings.py)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Final

from service.config import GenerationSettings
from service.eventlog import event as ev
from service.eventlog.event import Draft, Event, now_ms
from service.eventlog.journal import Emit, Journal
from service.files import FileRecord
from service.generation import drafts, pipeline
from service.generation.bounds import OutputBounds
from service.generation.leases import guarded
from service.generation.parser import Item
from service.generation.pipeline import Stage
from service.generation.providers.base import ModelRequest, Provider
from service.generation.run import Run
from service.generation.text import whole_characters
from service.generation.validation import check_file
from service.metrics import Metrics
from service.storage.interface import GenerationRow, Storage, Tx

# The lifecycle's logger, as before the run's steps had a module of their own.
log = logging.getLogger("service.generation.lifecycle")

# Paths a generation.completed summary names; the rest are counted.
SUMMARY_PATHS: Final = 10


class Runner:
    """Runs one generation's pipeline, from generation.started to generation.completed."""

    def __init__(
        self,
        storage: Storage,
        journal: Journal,
        provider: Provider,
        *,
        metrics: Metrics,
        limits: GenerationSettings,
    ) -> None:
        self._storage = storage
        self._journal = journal
        self._provider = provider
        self._metrics = metrics
        self._limits = limits

    async def run(self, run: Run, generation: GenerationRow) -> None:
        await self._begin(run)
        request = await self._plan(run, generation)
        await self._generate(run, request)
        await self._validate(run)
        await self._complete(run)

    async def _begin(self, run: Run) -> None:
        provider, model = self._provider.name, self._provider.model

        async def start(tx: Tx, emit: Emit) -> None:
            await tx.update_generation(
                run.generation_id, status="running", started_at=now_ms(), stage="planning"
            )
            await emit(
                run.draft(
                    ev.GENERATION_STARTED,
                    stages=pipeline.describe(),
                    provider=provider,
                    model=model,
                )
            )
            await emit(drafts.stage(run, pipeline.PLANNING, "active", 0))

        await self._journal.transact(guarded(run.guard, start))

    async def _plan(self, run: Run, generation: GenerationRow) -> ModelRequest:
        files = await self._storage.file_contents(run.project_id)
        run.existing = frozenset(file.path for file in files)
        history = tuple(
            (m.role, m.content)
            for m in await self._storage.messages(run.project_id)
            if m.generation_id != run.generation_id and m.status in ("complete", "success")
        )
        request = ModelRequest(
            prompt=generation.prompt,
            image_urls=generation.image_urls,
            files=tuple(files),
            history=history,
        )
        await self._stage(run, pipeline.PLANNING, "complete", 1.0)
        await self._stage(run, pipeline.GENERATING, "active", 0.0)
        return request

    async def _generate(self, run: Run, request: ModelRequest) -> None:
        step = pipeline.PROGRESS_STEP
        asked = time.perf_counter()
        bounds = OutputBounds(self._limits)
        appends = _ChunkAppends(self._journal, run)
        # aclosing: a failure in this loop (a cap crossed included) closes the provider's
        # stream (its HTTP connection) now, not whenever the collector finalizes it.
        try:
            async with contextlib.aclosing(
                whole_characters(self._provider.stream(request))
            ) as chunks:
                async for chunk in chunks:
                    if chunk.usage is not None:
                        run.usage = chunk.usage
                    if chunk.text:
                        if run.first_token_ms is None:
                            run.first_token_ms = round((time.perf_counter() - run.started) * 1000)
                            self._metrics.provider_first_token.observe(time.perf_counter() - asked)
                        # Counted before the parser holds it: nothing past the cap is kept.
                        bounds.take(chunk.text)
                        await _journal_items(appends, run, bounds, run.parser.feed(chunk.text))
                    if chunk.progress is not None:
                        overall = pipeline.GENERATING.at(chunk.progress)
                        if overall - run.progress >= step:
                            await appends.flush()  # the stage goes after the text before it
                            await self._stage(run, pipeline.GENERATING, "active", chunk.progress)
            self._metrics.provider_stream.observe(time.perf_counter() - asked)
            await _journal_items(appends, run, bounds, run.parser.finish())
            await appends.flush()
        finally:
            appends.hand_over()
        await self._stage(run, pipeline.GENERATING, "complete", 1.0)

    async def _validate(self, run: Run) -> None:
        await self._stage(run, pipeline.VALIDATING, "active", 0.0)
        found = []
        for file in run.files.values():
            # In a thread: a large file would hold the event loop while it parses.
            result = await asyncio.to_thread(check_file, file)
            if result is not None:
                found.append(
                    run.draft(
                        ev.VALIDATION,
                        check=result.check,
                        ok=result.ok,
                        detail=result.detail,
                        path=result.path,
                    )
                )
        if found:
            await self._journal.append(*found, check=run.guard)
        await self._stage(run, pipeline.VALIDATING, "complete", 1.0)

    async def _complete(self, run: Run) -> None:
        text = run.text
        files = list(run.files.values())
        summary = _summary(files)
        usage = run.usage.as_dict()
        timings = run.timings()

        async def finish(tx: Tx, emit: Emit) -> None:
            await tx.upsert_files(run.project_id, run.generation_id, files)
            await tx.update_message(run.assistant_message_id, "success", text)
            await tx.update_generation(
                run.generation_id,
                status="completed",
                stage=pipeline.COMPLETE.id,
                progress=100,
                usage=usage,
                timings=timings,
                finished_at=now_ms(),
            )
            await emit(drafts.message_updated(run, "success", text))
            await emit(drafts.stage(run, pipeline.COMPLETE, "complete", 100))
            await emit(
                run.draft(ev.GENERATION_COMPLETED, summary=summary, usage=usage, timings=timings)
            )

        await self._journal.transact(guarded(run.guard, finish))
        self._metrics.generations.labels("completed", "").inc()
        log.info("generation %s completed: %s", run.generation_id, summary)

    async def _stage(self, run: Run, stage: Stage, status: str, fraction: float) -> None:
        progress = stage.at(fraction)
        if status == "complete":
            run.end_stage(stage)

        async def record(tx: Tx, emit: Emit) -> None:
            await tx.update_generation(run.generation_id, stage=stage.id, progress=progress)
            await emit(drafts.stage(run, stage, status, progress))

        await self._journal.transact(guarded(run.guard, record))
        run.progress = progress


async def _journal_items(
    appends: _ChunkAppends, run: Run, bounds: OutputBounds, items: list[Item]
) -> None:
    """Journal the parser's items up to the first that crosses a cap, then fail with
    that cap: what came before it stays in the log, as after any failure."""
    admitted, crossed = bounds.admit(items)
    appends.add(drafts.from_items(run, admitted))
    if crossed is not None:
        await appends.flush()
        raise crossed


class _ChunkAppends:
    """A run's chunk events, group-committed across chunks: at most one append of the
    run is in the journal at a time, and the events of the chunks parsed while it
    commits wait here, then go as the next append, together.

    Awaiting each chunk's append made every chunk a commit of its own: the journal's
    group commit takes what is queued while the previous commit ran, and a run had
    never more than one append queued. On PostgreSQL a guarded append is five round
    trips (BEGIN, the log's lock, the lease's row, the insert, COMMIT), so a run
    advanced one chunk per five round trips: with 30 resuming streams and 6 pollers on
    the same event loop, about 40 events a second, and tests/test_exactly_once.py took
    50 to 70 s where SQLite takes 26 (seen as a stall: the writer's backend is idle in
    transaction, ClientRead, at any instant, since its next statement waits for the
    event loop; it never stopped). One append in flight keeps the log in the run's
    order and stops the run at the first refused write (Fenced, the database away),
    as awaiting each one did."""

    def __init__(self, journal: Journal, run: Run) -> None:
        self._journal = journal
        self._run = run
        self._waiting: list[Draft] = []
        # The append being committed; once done, it stays here only if it was refused.
        self._in_flight: asyncio.Future[list[Event]] | None = None
        self._closed = False

    def add(self, new: list[Draft]) -> None:
        """Queue these events: appended now if no append is being committed, else as
        soon as it is. Raises what refused an earlier append."""
        if self._in_flight is not None and self._in_flight.done():
            self._in_flight.result()
        self._waiting.extend(new)
        if self._in_flight is None:
            self._send()

    async def flush(self) -> None:
        """Every event added so far committed (or the refusal raised)."""
        while self._in_flight is not None or self._waiting:
            if self._in_flight is None:
                self._send()
            future = self._in_flight
            assert future is not None
            await future
            if self._in_flight is future:
                self._in_flight = None

    def hand_over(self) -> None:
        """On the way out (a failure, a cancel): what was added still goes to the
        journal, as an append handed over before a cancel did; nobody waits for it here
        (the run's end, queued after it, says how the run ended). Not after a refused
        append: a refusal stops the run there, as before."""
        self._closed = True
        future = self._in_flight
        refused = (
            future is not None
            and future.done()
            and not future.cancelled()
            and future.exception() is not None
        )
        if self._waiting and not refused:
            self._journal.append(*self._waiting, check=self._run.guard).add_done_callback(
                _retrieved
            )
        if future is not None:
            future.add_done_callback(_retrieved)
        self._waiting = []
        self._in_flight = None

    def _send(self) -> None:
        batch, self._waiting = self._waiting, []
        future = self._journal.append(*batch, check=self._run.guard)
        self._in_flight = future
        future.add_done_callback(self._sent)

    def _sent(self, future: asyncio.Future[list[Event]]) -> None:
        """The append committed: what waited behind it goes now, not at the next chunk
        (the model may be silent for a while: its text so far must reach the clients)."""
        if self._closed or future is not self._in_flight:
            return
        if future.cancelled() or future.exception() is not None:
            return  # refused: kept, raised at the next add or flush
        self._in_flight = None
        if self._waiting:
            self._send()


def _retrieved(future: asyncio.Future[list[Event]]) -> None:
    if not future.cancelled():
        future.exception()  # looked at: the run's end says how the run ended


def _summary(files: list[FileRecord]) -> str:
    """One line for people and logs: the count, and the first few paths only (a summary
    naming each of 20,000 files was 299 KB)."""
    if not files:
        return "No files written."
    names = ", ".join(f.path for f in files[:SUMMARY_PATHS])
    more = len(files) - SUMMARY_PATHS
    rest = f", and {more:,} more" if more > 0 else ""
    return f"Wrote {len(files):,} file{'s' if len(files) != 1 else ''}: {names}{rest}"
