"""Generations: created in one transaction, run as background tasks, always ended.

A generation's task walks the stage pipeline, streams the provider's text through the
output parser into the journal, and ends in exactly one terminal event. Every state
change is one transaction that carries its events, so the database never holds a
generation whose status and event log disagree.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Final, TypeVar

from service import logs
from service.config import GenerationSettings
from service.errors import Conflict, JournalClosed, JournalRefused, NotFound
from service.eventlog import event as ev
from service.eventlog.event import Draft, now_ms
from service.eventlog.journal import Emit, Journal
from service.files import FileRecord
from service.generation import pipeline
from service.generation.parser import (
    FileCompleted,
    FileDelta,
    FileRejected,
    FileStarted,
    Item,
    OutputParser,
    TextDelta,
)
from service.generation.pipeline import Stage
from service.generation.providers.base import ModelRequest, Provider, ProviderError, Usage
from service.generation.providers.base import output_too_large as _too_large
from service.generation.text import whole_characters
from service.generation.validation import check_file
from service.metrics import Metrics
from service.protocol import ACTIVE_STATUSES
from service.storage.interface import Storage, Tx

log = logging.getLogger(__name__)

T = TypeVar("T")

PENDING_CONTENT: Final = "Generating code..."
INTERRUPTED_MESSAGE: Final = "the server stopped while this generation ran; submit it again"
STORAGE_MESSAGE: Final = "the database refused a write while this generation ran; submit it again"
# Paths a generation.completed summary names; the rest are counted.
SUMMARY_PATHS: Final = 10
# Waits between tries to record a generation's end while the database refuses writes
# (busy, full), then every 8 s until it lands or the server stops (the next start then
# finishes it as interrupted). Its streams wait for that end, with heartbeats.
END_RETRY_DELAYS: Final = (0.1, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0)


def new_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:20]}"


@dataclass(frozen=True, slots=True)
class Submission:
    generation: dict[str, Any]
    user_message: dict[str, Any]
    assistant_message: dict[str, Any]
    created: bool  # False when client_request_id matched an earlier submission


@dataclass
class _Run:
    """What one running generation has produced so far."""

    generation_id: str
    project_id: str
    assistant_message_id: str
    parser: OutputParser = field(default_factory=OutputParser)
    files: dict[str, FileRecord] = field(default_factory=dict)
    # Paths the project held before this generation: writing one replaces it.
    existing: frozenset[str] = frozenset()
    stage_started: float = field(default_factory=time.perf_counter)
    stage_ms: dict[str, int] = field(default_factory=dict)
    started: float = field(default_factory=time.perf_counter)
    first_token_ms: int | None = None
    usage: Usage = field(default_factory=Usage)
    progress: int = 0
    # The chat text a previous process streamed (read back from the event log at
    # recovery); None while this process runs the parser itself.
    recovered_text: str | None = None

    @property
    def text(self) -> str:
        if self.recovered_text is not None:
            return self.recovered_text
        return self.parser.text.strip()

    def draft(self, type_: str, **payload: Any) -> Draft:
        return Draft(self.project_id, self.generation_id, type_, payload)

    def end_stage(self, stage: Stage) -> None:
        now = time.perf_counter()
        self.stage_ms[stage.id] = round((now - self.stage_started) * 1000)
        self.stage_started = now

    def timings(self) -> dict[str, Any]:
        total = time.perf_counter() - self.started
        generating_s = self.stage_ms.get(pipeline.GENERATING.id, 0) / 1000
        tokens = self.usage.completion_tokens
        return {
            "total_ms": round(total * 1000),
            "first_token_ms": self.first_token_ms,
            "tokens_per_second": round(tokens / generating_s, 1) if generating_s > 0 else None,
            "stages": dict(self.stage_ms),
        }


class Generations:
    def __init__(
        self,
        storage: Storage,
        journal: Journal,
        provider: Provider,
        *,
        max_concurrent: int,
        timeout_seconds: float,
        metrics: Metrics,
        limits: GenerationSettings,
    ) -> None:
        self._metrics = metrics
        self._limits = limits
        self._closing = False
        self._storage = storage
        self._journal = journal
        self._provider = provider
        self._timeout = timeout_seconds
        self._slots = asyncio.Semaphore(max_concurrent)
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._cancel_requested: set[str] = set()

    @property
    def running(self) -> int:
        return len(self._tasks)

    # -- submit ---------------------------------------------------------------------

    async def submit(
        self,
        project_id: str,
        prompt: str,
        image_urls: list[str],
        client_request_id: str | None,
    ) -> Submission:
        provider, model = self._provider.name, self._provider.model

        async def create(tx: Tx, emit: Emit) -> Submission:
            if not await tx.project_exists(project_id):
                raise NotFound("project", project_id)
            if client_request_id is not None:
                earlier = await tx.generation_by_request(project_id, client_request_id)
                if earlier is not None:
                    return await _resubmission(tx, earlier, prompt, image_urls)
            running = await tx.active_generation(project_id)
            if running is not None:
                raise Conflict(
                    "generation_running",
                    f"generation {running['id']} is still running in this project; "
                    "cancel it or wait for it to end",
                    generation_id=running["id"],
                )
            at = now_ms()
            gid = new_id("gen")
            user = _message(project_id, gid, "user", "complete", prompt, at)
            assistant = _message(project_id, gid, "assistant", "pending", PENDING_CONTENT, at)
            first = await emit(Draft(project_id, gid, ev.MESSAGE_CREATED, {"message": user}, at))
            await emit(Draft(project_id, gid, ev.MESSAGE_CREATED, {"message": assistant}, at))
            for message in (user, assistant):
                await tx.insert_message(
                    message["id"],
                    project_id,
                    gid,
                    message["role"],
                    message["status"],
                    message["content"],
                    at,
                )
            await tx.insert_generation(
                generation_id=gid,
                project_id=project_id,
                client_request_id=client_request_id,
                prompt=prompt,
                image_urls=image_urls,
                provider=provider,
                model=model,
                user_message_id=user["id"],
                assistant_message_id=assistant["id"],
                first_event_id=first.id,
                at=at,
            )
            generation = await tx.generation(gid)
            assert generation is not None
            return Submission(generation, user, assistant, created=True)

        future = self._journal.transact(create)
        # The rows commit even when this request is cancelled mid-submit (its client left;
        # the runner cancels handlers): start the task from the commit itself, or the
        # generation would stay pending for ever and hold the project.
        future.add_done_callback(self._start_if_created)
        return await asyncio.shield(future)

    def _start_if_created(self, future: asyncio.Future[Submission]) -> None:
        if future.cancelled() or future.exception() is not None:
            return  # the caller sees the error (or left, and it was logged by nobody)
        submission = future.result()
        if submission.created:
            self._start(submission.generation)

    def _start(self, generation: dict[str, Any]) -> None:
        gid = generation["id"]
        task = asyncio.create_task(self._run(generation), name=f"generation-{gid}")
        self._tasks[gid] = task
        task.add_done_callback(lambda _: self._tasks.pop(gid, None))

    # -- cancel, recover, close -------------------------------------------------------

    async def cancel(self, generation_id: str) -> dict[str, Any]:
        """Cancel a generation; cancelling one that has ended changes nothing."""
        task = self._tasks.get(generation_id)
        if task is not None:
            self._cancel_requested.add(generation_id)
            task.cancel()
            # The task writes generation.cancelled before it ends; wait for that so the
            # reply shows the final state.
            await asyncio.wait({task})
        generation = await self._storage.generation(generation_id)
        if generation is None:
            raise NotFound("generation", generation_id)
        if task is None and generation["status"] in ACTIVE_STATUSES:
            # Active with no task in this process: nothing else would ever end it.
            await self._finish_cancelled(await self._taskless_run(generation))
            generation = await self._storage.generation(generation_id) or generation
        return generation

    async def recover(self) -> list[str]:
        """Finish generations a previous process left running: failed, `interrupted`."""
        stale = await self._storage.active_generation_ids()
        for gid in stale:
            generation = await self._storage.generation(gid)
            if generation is None:
                continue
            run = await self._taskless_run(generation)
            await self._fail(run, ProviderError("interrupted", INTERRUPTED_MESSAGE, True))
            log.warning("generation %s was left running by a previous process: failed", gid)
        return stale

    async def _taskless_run(self, generation: dict[str, Any]) -> _Run:
        """A run for a generation no task of this process runs, to record its end. What
        was committed stays: the message keeps the text its deltas carried."""
        run = _Run(generation["id"], generation["project_id"], generation["assistant_message_id"])
        run.recovered_text = (await self._storage.streamed_text(generation["id"])).strip()
        return run

    async def close(self) -> None:
        """Stop every running generation; each ends as failed with code `interrupted`."""
        self._closing = True
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks)

    # -- the run --------------------------------------------------------------------

    async def _run(self, generation: dict[str, Any]) -> None:
        run = _Run(generation["id"], generation["project_id"], generation["assistant_message_id"])
        # The task runs in a copy of the submitting request's context: name it in logs.
        logs.project_id.set(run.project_id)
        logs.generation_id.set(run.generation_id)
        try:
            async with self._slots:
                run.started = run.stage_started = time.perf_counter()
                try:
                    async with asyncio.timeout(self._timeout):
                        await self._pipeline(run, generation)
                except BaseException as exc:
                    # Settled while the slot is still held: the next queued generation
                    # starts only once this one has ended, in the database too.
                    await self._settle(run, exc)
        except asyncio.CancelledError as exc:  # cancelled while waiting for a slot
            await self._settle(run, exc)

    async def _settle(self, run: _Run, exc: BaseException) -> None:
        """Record how the run ended. The task's last act: a cancellation that arrives
        while the end is recorded is absorbed once the end has landed."""
        with contextlib.suppress(asyncio.CancelledError):
            await self._end_for(run, exc)

    async def _end_for(self, run: _Run, exc: BaseException) -> None:
        if isinstance(exc, asyncio.CancelledError):
            if run.generation_id in self._cancel_requested:
                self._cancel_requested.discard(run.generation_id)
                await self._finish_cancelled(run)
            else:
                await self._fail(run, ProviderError("interrupted", INTERRUPTED_MESSAGE, True))
        elif isinstance(exc, TimeoutError):
            message = f"the generation took longer than {self._timeout:g} s"
            await self._fail(run, ProviderError("timeout", message, True))
        elif isinstance(exc, ProviderError):
            await self._fail(run, exc)
        elif isinstance(exc, JournalRefused):  # busy, full, closing
            log.error("generation %s could not be journaled: %s", run.generation_id, exc)
            await self._fail(run, ProviderError("storage_unavailable", STORAGE_MESSAGE, True))
        elif isinstance(exc, Exception):
            log.error("generation %s failed unexpectedly", run.generation_id, exc_info=exc)
            await self._fail(run, ProviderError("internal_error", "an internal error", False))
        else:
            raise exc  # KeyboardInterrupt, SystemExit: not ours to absorb

    async def _pipeline(self, run: _Run, generation: dict[str, Any]) -> None:
        await self._begin(run)
        request = await self._plan(run, generation)
        await self._generate(run, request)
        await self._validate(run)
        await self._complete(run)

    async def _begin(self, run: _Run) -> None:
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
            await emit(_stage_draft(run, pipeline.PLANNING, "active", 0))

        await self._journal.transact(start)

    async def _plan(self, run: _Run, generation: dict[str, Any]) -> ModelRequest:
        files = await self._storage.file_contents(run.project_id)
        run.existing = frozenset(file.path for file in files)
        history = tuple(
            (m["role"], m["content"])
            for m in await self._storage.messages(run.project_id)
            if m["generation_id"] != run.generation_id and m["status"] in ("complete", "success")
        )
        request = ModelRequest(
            prompt=generation["prompt"],
            image_urls=tuple(generation["image_urls"]),
            files=tuple(files),
            history=history,
        )
        await self._stage(run, pipeline.PLANNING, "complete", 1.0)
        await self._stage(run, pipeline.GENERATING, "active", 0.0)
        return request

    async def _generate(self, run: _Run, request: ModelRequest) -> None:
        step = pipeline.PROGRESS_STEP
        asked = time.perf_counter()
        bounds = _OutputBounds(self._limits)
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

    async def _journal_items(self, run: _Run, bounds: _OutputBounds, items: list[Item]) -> None:
        """Journal the parser's items up to the first that crosses a cap, then fail with
        that cap: what came before it stays in the log, as after any failure."""
        admitted, crossed = bounds.admit(items)
        drafts = self._drafts(run, admitted)
        if drafts:
            await self._journal.append(*drafts)
        if crossed is not None:
            raise crossed

    def _drafts(self, run: _Run, items: list[Item]) -> list[Draft]:
        drafts: list[Draft] = []
        for item in items:
            if isinstance(item, TextDelta):
                drafts.append(
                    run.draft(
                        ev.MESSAGE_DELTA, message_id=run.assistant_message_id, delta=item.text
                    )
                )
            elif isinstance(item, FileStarted):
                replaces = item.path in run.existing or item.path in run.files
                drafts.append(run.draft(ev.FILE_STARTED, path=item.path, replaces=replaces))
            elif isinstance(item, FileDelta):
                drafts.append(
                    run.draft(ev.FILE_DELTA, path=item.path, delta=item.text, line=item.line)
                )
            elif isinstance(item, FileCompleted):
                run.files[item.path] = FileRecord(item.path, item.content, item.size, item.sha256)
                drafts.append(
                    run.draft(ev.FILE_COMPLETED, path=item.path, size=item.size, sha256=item.sha256)
                )
                if not item.closed:
                    # Kept, but said: a model cut off (max_tokens) leaves its last file short.
                    detail = "the model stopped before </file>: the file may be cut short"
                    drafts.append(
                        run.draft(
                            ev.VALIDATION, check="closed", ok=False, detail=detail, path=item.path
                        )
                    )
            elif isinstance(item, FileRejected):
                drafts.append(
                    run.draft(
                        ev.VALIDATION, check="path", ok=False, detail=item.reason, path=item.path
                    )
                )
        return drafts

    async def _validate(self, run: _Run) -> None:
        await self._stage(run, pipeline.VALIDATING, "active", 0.0)
        drafts = []
        for file in run.files.values():
            # In a thread: a large file would hold the event loop while it parses.
            result = await asyncio.to_thread(check_file, file)
            if result is not None:
                drafts.append(
                    run.draft(
                        ev.VALIDATION,
                        check=result.check,
                        ok=result.ok,
                        detail=result.detail,
                        path=result.path,
                    )
                )
        if drafts:
            await self._journal.append(*drafts)
        await self._stage(run, pipeline.VALIDATING, "complete", 1.0)

    async def _complete(self, run: _Run) -> None:
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
            await emit(
                run.draft(
                    ev.MESSAGE_UPDATED,
                    message=_message_update(run.assistant_message_id, "success", text),
                )
            )
            await emit(_stage_draft(run, pipeline.COMPLETE, "complete", 100))
            await emit(
                run.draft(ev.GENERATION_COMPLETED, summary=summary, usage=usage, timings=timings)
            )

        await self._journal.transact(finish)
        self._metrics.generations.labels("completed", "").inc()
        log.info("generation %s completed: %s", run.generation_id, summary)

    async def _stage(self, run: _Run, stage: Stage, status: str, fraction: float) -> None:
        progress = stage.at(fraction)
        if status == "complete":
            run.end_stage(stage)

        async def record(tx: Tx, emit: Emit) -> None:
            await tx.update_generation(run.generation_id, stage=stage.id, progress=progress)
            await emit(_stage_draft(run, stage, status, progress))

        await self._journal.transact(record)
        run.progress = progress

    # -- endings --------------------------------------------------------------------

    async def _fail(self, run: _Run, error: ProviderError) -> None:
        payload = {"code": error.code, "message": error.message, "retryable": error.retryable}
        await self._end(
            run,
            status="failed",
            message_status="error",
            terminal=run.draft(ev.GENERATION_FAILED, **payload),
            error=error,
        )

    async def _finish_cancelled(self, run: _Run) -> None:
        await self._end(
            run,
            status="cancelled",
            message_status="cancelled",
            terminal=run.draft(ev.GENERATION_CANCELLED),
            error=None,
        )

    async def _end(
        self,
        run: _Run,
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
            if current is None or current["status"] not in ACTIVE_STATUSES:
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
            await emit(
                run.draft(
                    ev.MESSAGE_UPDATED,
                    message=_message_update(run.assistant_message_id, message_status, text),
                )
            )
            await emit(terminal)
            return True

        # In a task of its own: a second cancellation of the generation's task (a cancel,
        # then shutdown) must not stop the end from being recorded.
        await _uncancellable(asyncio.ensure_future(self._record_end(run, end, status, error)))

    async def _record_end(
        self,
        run: _Run,
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
                if self._closing or isinstance(exc, JournalClosed):
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


class _OutputBounds:
    """What one generation may take from its model: generation.max_output_chars (every
    character it sends, tags included), max_files (distinct paths) and max_file_bytes
    (one file's UTF-8 bytes). `max_tokens` is only a request to the model; a model that
    ignores it, or sends a token of megabytes, is stopped here, before its text grows
    the parser's buffers, the run's files or the message."""

    __slots__ = ("_chars", "_file_bytes", "_limits", "_paths")

    def __init__(self, limits: GenerationSettings) -> None:
        self._limits = limits
        self._chars = 0
        self._paths: set[str] = set()
        self._file_bytes = 0  # of the file being written

    def take(self, text: str) -> None:
        """Count a chunk of the model's text; raise if it crosses the output cap (the
        chunk is then not taken at all)."""
        self._chars += len(text)
        limit = self._limits.max_output_chars
        if self._chars > limit:
            raise _too_large(f"the model's answer passed generation.max_output_chars ({limit:,})")

    def admit(self, items: list[Item]) -> tuple[list[Item], ProviderError | None]:
        """The items before the first that crosses a cap, and that cap's error."""
        for index, item in enumerate(items):
            crossed = self._crosses(item)
            if crossed is not None:
                return items[:index], crossed
        return items, None

    def _crosses(self, item: Item) -> ProviderError | None:
        if isinstance(item, FileStarted):
            self._file_bytes = 0
            if item.path not in self._paths:  # a file written again is still one file
                if len(self._paths) >= self._limits.max_files:
                    limit = self._limits.max_files
                    return _too_large(f"the model wrote more than generation.max_files ({limit:,})")
                self._paths.add(item.path)
        elif isinstance(item, FileDelta):
            # surrogatepass: a count, never an error, whatever the text holds.
            self._file_bytes += len(item.text.encode("utf-8", "surrogatepass"))
            limit = self._limits.max_file_bytes
            if self._file_bytes > limit:
                return _too_large(
                    f"the file {item.path} passed generation.max_file_bytes ({limit:,} bytes)"
                )
        return None


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


async def _resubmission(
    tx: Tx, earlier: dict[str, Any], prompt: str, image_urls: list[str]
) -> Submission:
    if earlier["prompt"] != prompt or earlier["image_urls"] != image_urls:
        raise Conflict(
            "client_request_id_reused",
            "client_request_id was already used for a different prompt",
            generation_id=earlier["id"],
        )
    messages = {}
    for key in ("user_message_id", "assistant_message_id"):
        row = await tx.message(earlier[key])
        assert row is not None
        messages[key] = row
    return Submission(
        earlier, messages["user_message_id"], messages["assistant_message_id"], created=False
    )


def _message(
    project_id: str, generation_id: str, role: str, status: str, content: str, at: int
) -> dict[str, Any]:
    """A new message, in the shape the messages API returns."""
    return {
        "id": new_id("msg"),
        "project_id": project_id,
        "generation_id": generation_id,
        "role": role,
        "status": status,
        "content": content,
        "created_at": at,
        "updated_at": at,
    }


def _message_update(message_id: str, status: str, content: str) -> dict[str, Any]:
    return {"id": message_id, "status": status, "content": content}


def _stage_draft(run: _Run, stage: Stage, status: str, progress: int) -> Draft:
    return run.draft(ev.STAGE, stage=stage.id, label=stage.label, status=status, progress=progress)


def _summary(files: list[FileRecord]) -> str:
    """One line for people and logs: the count, and the first few paths only (a summary
    naming each of 20,000 files was 299 KB)."""
    if not files:
        return "No files written."
    names = ", ".join(f.path for f in files[:SUMMARY_PATHS])
    more = len(files) - SUMMARY_PATHS
    rest = f", and {more:,} more" if more > 0 else ""
    return f"Wrote {len(files):,} file{'s' if len(files) != 1 else ''}: {names}{rest}"
