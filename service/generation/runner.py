"""One run of a pipeline: begin, the pipeline's own steps, complete. Each state change
is one transaction that carries its events; a step that fails raises, and the lifecycle
records how the run ended (endings.py). `Steps` is what the pipeline's run is given:
the pipeline.Context every pipeline writes through."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

from service.config import GenerationSettings
from service.eventlog import event as ev
from service.eventlog.event import Draft, Event, now_ms
from service.eventlog.journal import Emit, Journal
from service.generation import drafts
from service.generation.bounds import OutputBounds
from service.generation.leases import guarded
from service.generation.pipeline import Outcome, Pipeline
from service.generation.providers.base import Chunk, ModelRequest, Provider
from service.generation.run import Run
from service.generation.text import whole_characters
from service.metrics import Metrics
from service.storage.interface import GenerationRow, Storage, Tx

# The lifecycle's logger, as before the run's steps had a module of their own.
log = logging.getLogger("service.generation.lifecycle")

T = TypeVar("T")


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
        # Read by each run's Steps, which write through them.
        self.storage = storage
        self.journal = journal
        self.provider = provider
        self.metrics = metrics
        self.limits = limits

    async def run(self, run: Run, generation: GenerationRow, pipeline: Pipeline) -> None:
        await self._begin(run, pipeline)
        steps = Steps(self, run, generation, pipeline)
        try:
            outcome = await pipeline.run(steps)
            await steps.flush()
        finally:
            steps.hand_over()
        await self._complete(run, pipeline, outcome)

    async def _begin(self, run: Run, pipeline: Pipeline) -> None:
        provider, model = self.provider.name, self.provider.model
        first = pipeline.first

        async def start(tx: Tx, emit: Emit) -> None:
            await tx.update_generation(
                run.generation_id, status="running", started_at=now_ms(), stage=first.id
            )
            await emit(
                run.draft(
                    ev.GENERATION_STARTED,
                    stages=pipeline.describe(),
                    pipeline=pipeline.name,
                    provider=provider,
                    model=model,
                )
            )
            await emit(drafts.stage(run, first, "active", first.start))

        await self.journal.transact(guarded(run.guard, start))
        run.progress = first.start

    async def _complete(self, run: Run, pipeline: Pipeline, outcome: Outcome) -> None:
        text = run.text if outcome.text is None else outcome.text
        files = list(outcome.files)
        summary = outcome.summary if outcome.summary is not None else "Done."
        usage = run.usage.as_dict()
        last = pipeline.last
        run.end_stage(last)
        timings = run.timings()
        completed: dict[str, Any] = {"summary": summary, "usage": usage, "timings": timings}
        if outcome.result is not None:
            completed["result"] = dict(outcome.result)

        async def finish(tx: Tx, emit: Emit) -> None:
            if files:
                await tx.upsert_files(run.project_id, run.generation_id, files)
            await tx.update_message(run.assistant_message_id, "success", text)
            await tx.update_generation(
                run.generation_id,
                status="completed",
                stage=last.id,
                progress=100,
                usage=usage,
                timings=timings,
                finished_at=now_ms(),
            )
            await emit(drafts.message_updated(run, "success", text))
            await emit(drafts.stage(run, last, "complete", 100))
            await emit(run.draft(ev.GENERATION_COMPLETED, **completed))

        await self.journal.transact(guarded(run.guard, finish))
        self.metrics.generations.labels("completed", "").inc()
        log.info("generation %s completed: %s", run.generation_id, summary)

    async def stage(
        self, run: Run, pipeline: Pipeline, stage_id: str, status: str, fraction: float
    ) -> None:
        stage = pipeline.stage(stage_id)
        progress = stage.end if status == "complete" else stage.at(fraction)
        if status == "complete":
            run.end_stage(stage)

        async def record(tx: Tx, emit: Emit) -> None:
            await tx.update_generation(run.generation_id, stage=stage.id, progress=progress)
            await emit(drafts.stage(run, stage, status, progress))

        await self.journal.transact(guarded(run.guard, record))
        run.progress = progress


class Steps:
    """What a pipeline's run writes through (pipeline.Context): its events queued in
    order and group-committed (_ChunkAppends), its stages and its own transactions after
    them, the model's stream within the output caps."""

    def __init__(
        self, runner: Runner, run: Run, generation: GenerationRow, pipeline: Pipeline
    ) -> None:
        self._runner = runner
        self._run = run
        self._generation = generation
        self._pipeline = pipeline
        self._appends = _ChunkAppends(runner.journal, run)
        self._bounds = OutputBounds(runner.limits)

    @property
    def generation(self) -> GenerationRow:
        return self._generation

    @property
    def storage(self) -> Storage:
        return self._runner.storage

    @property
    def limits(self) -> GenerationSettings:
        return self._runner.limits

    @property
    def progress(self) -> int:
        return self._run.progress

    async def stage(self, stage_id: str, status: str = "active", fraction: float = 0.0) -> None:
        if status not in ("active", "complete"):
            raise ValueError(f"a stage is active or complete, not {status!r}")
        await self.flush()  # the stage goes after the events before it
        await self._runner.stage(self._run, self._pipeline, stage_id, status, fraction)

    def draft(self, type_: str, **payload: Any) -> Draft:
        return self._run.draft(type_, **payload)

    def send(self, *drafts: Draft) -> None:
        for draft in drafts:
            self._pipeline.check_event(draft.type, draft.payload)
        self._appends.add(list(drafts))

    def emit(self, type_: str, **payload: Any) -> None:
        self.send(self.draft(type_, **payload))

    def say(self, text: str) -> None:
        if text:
            self._run.said.append(text)
            self._appends.add([drafts.message_delta(self._run, text)])

    async def flush(self) -> None:
        await self._appends.flush()

    def hand_over(self) -> None:
        self._appends.hand_over()

    async def model(self, request: ModelRequest) -> AsyncIterator[Chunk]:
        run, metrics = self._run, self._runner.metrics
        asked = time.perf_counter()
        # aclosing: a failure while the pipeline reads (a cap crossed included) closes
        # the provider's stream (its HTTP connection) now, not when the collector runs.
        try:
            async with contextlib.aclosing(
                whole_characters(self._runner.provider.stream(request))
            ) as chunks:
                async for chunk in chunks:
                    if chunk.usage is not None:
                        run.usage = run.usage.plus(chunk.usage)
                    if chunk.text:
                        if run.first_token_ms is None:
                            run.first_token_ms = round((time.perf_counter() - run.started) * 1000)
                            metrics.provider_first_token.observe(time.perf_counter() - asked)
                        # Counted before the pipeline holds it: nothing past the cap is kept.
                        self._bounds.take(chunk.text)
                    yield chunk
            metrics.provider_stream.observe(time.perf_counter() - asked)
        finally:
            run.model_seconds += time.perf_counter() - asked

    async def transact(self, work: Callable[[Tx, Emit], Awaitable[T]]) -> T:
        await self.flush()

        async def checked(tx: Tx, emit: Emit) -> T:
            async def emit_checked(draft: Draft) -> Event:
                self._pipeline.check_event(draft.type, draft.payload)
                return await emit(draft)

            return await work(tx, emit_checked)

        return await self._runner.journal.transact(guarded(self._run.guard, checked))


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
