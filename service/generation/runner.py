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
from service.eventlog.event import now_ms
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
        # aclosing: a failure in this loop (a cap crossed included) closes the provider's
        # stream (its HTTP connection) now, not whenever the collector finalizes it.
        async with contextlib.aclosing(whole_characters(self._provider.stream(request))) as chunks:
            async for chunk in chunks:
                if chunk.usage is not None:
                    run.usage = chunk.usage
                if chunk.text:
                    if run.first_token_ms is None:
                        run.first_token_ms = round((time.perf_counter() - run.started) * 1000)
                        self._metrics.provider_first_token.observe(time.perf_counter() - asked)
                    # Counted before the parser holds it: nothing past the cap is kept.
                    bounds.take(chunk.text)
                    await self._journal_items(run, bounds, run.parser.feed(chunk.text))
                if chunk.progress is not None:
                    overall = pipeline.GENERATING.at(chunk.progress)
                    if overall - run.progress >= step:
                        await self._stage(run, pipeline.GENERATING, "active", chunk.progress)
        self._metrics.provider_stream.observe(time.perf_counter() - asked)
        await self._journal_items(run, bounds, run.parser.finish())
        await self._stage(run, pipeline.GENERATING, "complete", 1.0)

    async def _journal_items(self, run: Run, bounds: OutputBounds, items: list[Item]) -> None:
        """Journal the parser's items up to the first that crosses a cap, then fail with
        that cap: what came before it stays in the log, as after any failure."""
        admitted, crossed = bounds.admit(items)
        admitted_drafts = drafts.from_items(run, admitted)
        if admitted_drafts:
            await self._journal.append(*admitted_drafts, check=run.guard)
        if crossed is not None:
            raise crossed

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


def _summary(files: list[FileRecord]) -> str:
    """One line for people and logs: the count, and the first few paths only (a summary
    naming each of 20,000 files was 299 KB)."""
    if not files:
        return "No files written."
    names = ", ".join(f.path for f in files[:SUMMARY_PATHS])
    more = len(files) - SUMMARY_PATHS
    rest = f", and {more:,} more" if more > 0 else ""
    return f"Wrote {len(files):,} file{'s' if len(files) != 1 else ''}: {names}{rest}"
