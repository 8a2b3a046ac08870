"""The `code` pipeline: chat that writes code files, through planning, generating,
validating and complete. The model's text is parsed as it streams (parser.py) into chat
text and files; the files are checked once written, and stored as the run completes."""

from __future__ import annotations

import asyncio
from typing import Final

from service.eventlog import event as ev
from service.eventlog.event import Draft
from service.files import FileRecord
from service.generation.bounds import OutputBounds
from service.generation.parser import (
    FileCompleted,
    FileDelta,
    FileRejected,
    FileStarted,
    Item,
    OutputParser,
    TextDelta,
)
from service.generation.pipeline import Context, Outcome, Pipeline, Stage
from service.generation.providers.base import ModelRequest
from service.generation.validation import check_file

PLANNING: Final = Stage("planning", "Planning", 0, 10)
GENERATING: Final = Stage("generating", "Generating code", 10, 85)
VALIDATING: Final = Stage("validating", "Validating", 85, 99)
COMPLETE: Final = Stage("complete", "Complete", 100, 100)
STAGES: Final = (PLANNING, GENERATING, VALIDATING, COMPLETE)

# Progress inside the generating stage is published in steps of this many percent:
# enough to move a progress bar smoothly without an event per token.
PROGRESS_STEP: Final = 5
# Paths a generation.completed summary names; the rest are counted.
SUMMARY_PATHS: Final = 10


class _Files:
    """What the run has written: the files completed so far, and the project's before."""

    def __init__(self, existing: frozenset[str]) -> None:
        self.existing = existing
        self.written: dict[str, FileRecord] = {}


async def run(ctx: Context) -> Outcome:
    generation = ctx.generation
    storage = ctx.storage
    files = await storage.file_contents(generation.project_id)
    history = tuple(
        (m.role, m.content)
        for m in await storage.messages(generation.project_id)
        if m.generation_id != generation.id and m.status in ("complete", "success")
    )
    request = ModelRequest(
        prompt=generation.prompt,
        image_urls=generation.image_urls,
        files=tuple(files),
        history=history,
    )
    await ctx.stage(PLANNING.id, "complete")
    await ctx.stage(GENERATING.id, "active", 0.0)
    written = _Files(frozenset(file.path for file in files))
    await _generate(ctx, request, written)
    await ctx.stage(GENERATING.id, "complete")
    await _validate(ctx, written)
    records = list(written.written.values())
    return Outcome(files=records, summary=summary(records))


async def _generate(ctx: Context, request: ModelRequest, written: _Files) -> None:
    parser = OutputParser()
    bounds = _ItemBounds(ctx)
    async for chunk in ctx.model(request):
        if chunk.text:
            _send(ctx, written, bounds.admit(parser.feed(chunk.text)))
            await bounds.raise_crossed()
        progress = chunk.progress
        if progress is not None and GENERATING.at(progress) - ctx.progress >= PROGRESS_STEP:
            await ctx.stage(GENERATING.id, "active", progress)
    _send(ctx, written, bounds.admit(parser.finish()))
    await bounds.raise_crossed()
    await ctx.flush()


class _ItemBounds:
    """The caps on files (generation.max_files, max_file_bytes): the items up to the
    first that crosses one are sent, then the run fails with that cap; what came before
    it stays in the log, as after any failure."""

    def __init__(self, ctx: Context) -> None:
        self._ctx = ctx
        self._bounds = OutputBounds(ctx.limits)
        self._crossed: Exception | None = None

    def admit(self, items: list[Item]) -> list[Item]:
        admitted, self._crossed = self._bounds.admit(items)
        return admitted

    async def raise_crossed(self) -> None:
        """Once a cap is crossed: what came before it committed, then the failure."""
        if self._crossed is not None:
            await self._ctx.flush()
            raise self._crossed


def _send(ctx: Context, written: _Files, items: list[Item]) -> None:
    """The parser's items as events, in order; a completed file is kept for the end."""
    for item in items:
        if isinstance(item, TextDelta):
            ctx.say(item.text)
        else:
            ctx.send(*_drafts(ctx, written, item))


def _drafts(ctx: Context, written: _Files, item: Item) -> list[Draft]:
    if isinstance(item, FileStarted):
        replaces = item.path in written.existing or item.path in written.written
        return [ctx.draft(ev.FILE_STARTED, path=item.path, replaces=replaces)]
    if isinstance(item, FileDelta):
        return [ctx.draft(ev.FILE_DELTA, path=item.path, delta=item.text, line=item.line)]
    if isinstance(item, FileCompleted):
        written.written[item.path] = FileRecord(item.path, item.content, item.size, item.sha256)
        completed = ctx.draft(ev.FILE_COMPLETED, path=item.path, size=item.size, sha256=item.sha256)
        if item.closed:
            return [completed]
        # Kept, but said: a model cut off (max_tokens) leaves its last file short.
        detail = "the model stopped before </file>: the file may be cut short"
        return [
            completed,
            ctx.draft(ev.VALIDATION, check="closed", ok=False, detail=detail, path=item.path),
        ]
    if isinstance(item, FileRejected):
        reason = item.reason
        return [ctx.draft(ev.VALIDATION, check="path", ok=False, detail=reason, path=item.path)]
    return []


async def _validate(ctx: Context, written: _Files) -> None:
    await ctx.stage(VALIDATING.id, "active", 0.0)
    for file in written.written.values():
        # In a thread: a large file would hold the event loop while it parses.
        result = await asyncio.to_thread(check_file, file)
        if result is not None:
            ctx.emit(
                ev.VALIDATION,
                check=result.check,
                ok=result.ok,
                detail=result.detail,
                path=result.path,
            )
    await ctx.flush()
    await ctx.stage(VALIDATING.id, "complete")


def summary(files: list[FileRecord]) -> str:
    """One line for people and logs: the count, and the first few paths only (a summary
    naming each of 20,000 files was 299 KB)."""
    if not files:
        return "No files written."
    names = ", ".join(f.path for f in files[:SUMMARY_PATHS])
    more = len(files) - SUMMARY_PATHS
    rest = f", and {more:,} more" if more > 0 else ""
    return f"Wrote {len(files):,} file{'s' if len(files) != 1 else ''}: {names}{rest}"


PIPELINE: Final = Pipeline(
    name="code",
    label="Code",
    description="Chat that writes code files: planning, generating, validating, complete.",
    stages=STAGES,
    run=run,
    pending="Generating code...",
)
