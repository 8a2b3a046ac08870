"""Generations: created in one transaction, run as background tasks, always ended.

The lifecycle: a submission creates the generation's rows and starts its task; the task
waits for a slot, runs the stage pipeline (runner.py) and records how it ended
(endings.py), in exactly one terminal event. Cancel, recover and close end the
generations no task will finish. Every state change is one transaction that carries its
events, so the database never holds a generation whose status and event log disagree.

Where several processes share the database (PostgreSQL), a process runs the generations
it created under a lease (leases.py): every write of a run is checked to still hold it,
a cancel asked on another process is a flag its owner reads, and the generations of a
process that stopped renewing are ended by the others, as a start ends a dead one's.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from service import logs
from service.config import GenerationSettings
from service.errors import Conflict, Invalid, JournalRefused, NotFound
from service.eventlog.event import now_ms
from service.eventlog.journal import Emit, Journal
from service.generation import drafts
from service.generation.endings import Endings
from service.generation.leases import Fenced, LeaseKeeper, identity, lapsed_guard, owner_guard
from service.generation.pipeline import Pipeline
from service.generation.providers.base import Provider, ProviderError
from service.generation.run import Run
from service.generation.runner import Runner
from service.metrics import Metrics
from service.protocol import ACTIVE_STATUSES
from service.storage.interface import Duplicate, GenerationRow, MessageRow, Storage, Tx

log = logging.getLogger(__name__)

INTERRUPTED_MESSAGE: Final = "the server stopped while this generation ran; submit it again"
STORAGE_MESSAGE: Final = "the database refused a write while this generation ran; submit it again"
# A submit that meets another process's commit of the same key reads again (Duplicate):
# the second try sees that commit, so more than two never happen; three bound it.
SUBMIT_TRIES: Final = 3
# How often a cancel of a generation another process runs looks for its end.
CANCEL_WAIT_POLL_SECONDS: Final = 0.05


def new_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:20]}"


@dataclass(frozen=True, slots=True)
class Submission:
    generation: GenerationRow
    user_message: MessageRow
    assistant_message: MessageRow
    created: bool  # False when client_request_id matched an earlier submission


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
        pipelines: Mapping[str, Pipeline],
    ) -> None:
        if limits.pipeline not in pipelines:
            raise ValueError(f"generation.pipeline: no pipeline named {limits.pipeline!r}")
        self._pipelines = pipelines
        self._default_pipeline = limits.pipeline
        self._storage = storage
        self._journal = journal
        self._provider = provider
        self._timeout = timeout_seconds
        self._slots = asyncio.Semaphore(max_concurrent)
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._cancel_requested: set[str] = set()
        self._fenced: set[str] = set()  # their lease lost: their tasks stop, writing nothing
        self._runner = Runner(storage, journal, provider, metrics=metrics, limits=limits)
        self._endings = Endings(journal, metrics)
        # Several processes on one database: this process's leases (generation/leases.py).
        self._leases: LeaseKeeper | None = None
        if storage.shared:
            self._leases = LeaseKeeper(
                storage,
                journal,
                owner=identity(),
                seconds=limits.lease_seconds,
                held=lambda: list(self._tasks),
                lost=self._fence,
                cancel=self._cancel_asked_elsewhere,
                reap=self._reap,
            )

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
        pipeline_name: str | None = None,
        inputs: Mapping[str, Any] | None = None,
    ) -> Submission:
        provider, model = self._provider.name, self._provider.model
        pipeline = await self._chosen(project_id, pipeline_name)
        inputs = dict(inputs or {})
        pipeline.check_inputs(inputs)

        async def create(tx: Tx, emit: Emit) -> Submission:
            # Several processes: another's submit must not commit between the checks
            # below (the same request, then a running generation), or they would disagree.
            await tx.lock_log()
            if not await tx.project_exists(project_id):
                raise NotFound("project", project_id)
            if client_request_id is not None:
                earlier = await tx.generation_by_request(project_id, client_request_id)
                if earlier is not None:
                    return await _resubmission(
                        tx, earlier, prompt, image_urls, pipeline.name, inputs
                    )
            await _refuse_if_running(tx, project_id)
            at = now_ms()
            gid = new_id("gen")
            user = _message(project_id, gid, "user", "complete", prompt, at)
            assistant = _message(project_id, gid, "assistant", "pending", pipeline.pending, at)
            first = await emit(drafts.message_created(user))
            await emit(drafts.message_created(assistant))
            for message in (user, assistant):
                await tx.insert_message(message)
            await tx.insert_generation(
                generation_id=gid,
                project_id=project_id,
                client_request_id=client_request_id,
                prompt=prompt,
                image_urls=image_urls,
                provider=provider,
                model=model,
                user_message_id=user.id,
                assistant_message_id=assistant.id,
                first_event_id=first.id,
                at=at,
                pipeline=pipeline.name,
                inputs=inputs,
            )
            if self._leases is not None:
                await self._leases.take(tx, gid)
            generation = await tx.generation(gid)
            assert generation is not None
            return Submission(generation, user, assistant, created=True)

        for attempt in range(1, SUBMIT_TRIES + 1):
            future = self._journal.transact(create)
            # The rows commit even when this request is cancelled mid-submit (its client
            # left; the runner cancels handlers): start the task from the commit itself, or
            # the generation would stay pending for ever and hold the project.
            future.add_done_callback(self._start_if_created)
            try:
                return await asyncio.shield(future)
            except Duplicate as exc:
                # Another process committed this client_request_id, or a generation of
                # this project, after this try read: the next try reads that commit and
                # answers as one process would (created false, or the 409).
                if attempt == SUBMIT_TRIES:
                    raise
                log.info("submit met another process's commit (%s): reading again", exc.constraint)
        raise AssertionError("unreachable")

    @property
    def pipelines(self) -> Mapping[str, Pipeline]:
        return self._pipelines

    async def _chosen(self, project_id: str, name: str | None) -> Pipeline:
        """The pipeline a submit runs: the one it names, else its project's default, else
        the configured one. (The project's default is read before the submit's
        transaction: one changed meanwhile applies from the next submit.)"""
        if name is None:
            project = await self._storage.project(project_id)
            if project is None:
                raise NotFound("project", project_id)
            name = project.pipeline or self._default_pipeline
        return self.pipeline(name)

    def pipeline(self, name: str) -> Pipeline:
        """The pipeline of that name; Invalid, naming those there are, if none."""
        pipeline = self._pipelines.get(name)
        if pipeline is None:
            known = ", ".join(sorted(self._pipelines))
            raise Invalid("unknown_pipeline", f"no pipeline named {name!r} (there are: {known})")
        return pipeline

    def _start_if_created(self, future: asyncio.Future[Submission]) -> None:
        if future.cancelled() or future.exception() is not None:
            return  # the caller sees the error (or left, and it was logged by nobody)
        submission = future.result()
        if submission.created:
            self._start(submission.generation)

    def _start(self, generation: GenerationRow) -> None:
        gid = generation.id
        task = asyncio.create_task(self._run(generation), name=f"generation-{gid}")
        self._tasks[gid] = task
        task.add_done_callback(lambda _: self._tasks.pop(gid, None))

    # -- cancel, recover, close -------------------------------------------------------

    async def cancel(self, generation_id: str) -> GenerationRow:
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
        if task is None and generation.status in ACTIVE_STATUSES:
            if self._leases is None:
                # Active with no task in this process: nothing else would ever end it.
                await self._endings.cancelled(await self._taskless_run(generation))
            else:
                await self._cancel_elsewhere(generation, self._leases.seconds)
            generation = await self._storage.generation(generation_id) or generation
        return generation

    async def _cancel_elsewhere(self, generation: GenerationRow, lease_seconds: float) -> None:
        """Cancel a generation another process runs: flag it; its owner reads the flags
        every leases.CANCEL_POLL_SECONDS and ends it as cancelled. Wait for that end, so
        the reply shows the final state as on one process. One no live process holds
        (its lease lapsed) is ended here."""
        gid = generation.id

        async def ask(tx: Tx, emit: Emit) -> bool:
            if await tx.lease_lapsed(gid):
                return True
            await tx.request_cancel(gid)
            return False

        if await self._journal.transact(ask):
            run = await self._taskless_run(generation)
            run.guard = lapsed_guard(gid)
            with contextlib.suppress(Fenced):  # a reaper ended it first
                await self._endings.cancelled(run)
            return
        # Bounded: should the owner die meanwhile, a reaper ends it within a lease.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(2 * lease_seconds):
                # The owner's end is another process's commit: no event here to await.
                while not await self._has_ended(gid):  # noqa: ASYNC110
                    await asyncio.sleep(CANCEL_WAIT_POLL_SECONDS)

    async def _has_ended(self, generation_id: str) -> bool:
        row = await self._storage.generation(generation_id)
        return row is None or row.status not in ACTIVE_STATUSES

    def _cancel_asked_elsewhere(self, generation_id: str) -> None:
        """A cancel asked on another process, of a generation this one runs (asked once:
        the flag stays set until the end commits, and is read again meanwhile)."""
        task = self._tasks.get(generation_id)
        if task is not None and not task.cancelling():
            self._cancel_requested.add(generation_id)
            task.cancel()

    def _fence(self, generation_id: str) -> None:
        """This process lost the generation's lease: stop its task, writing nothing more."""
        task = self._tasks.get(generation_id)
        if task is not None:
            self._fenced.add(generation_id)
            task.cancel()

    async def _reap(self) -> list[str]:
        """End the generations whose owner stopped renewing its lease (killed, paused,
        cut off from the database): failed, `interrupted`, as a start ends what a dead
        process left. Each end is checked, in its transaction, to be still lapsed."""
        reaped = []
        for gid in await self._storage.lapsed_generation_ids():
            generation = None if gid in self._tasks else await self._storage.generation(gid)
            if generation is None:
                continue  # ours: the renewal finds its lease lost and stops it first
            run = await self._taskless_run(generation)
            run.guard = lapsed_guard(gid)
            try:
                await self._endings.fail(
                    run, ProviderError("interrupted", INTERRUPTED_MESSAGE, True)
                )
            except Fenced:
                continue  # another process ended it first
            log.warning("generation %s: its process stopped renewing its lease: failed", gid)
            reaped.append(gid)
        return reaped

    async def recover(self) -> list[str]:
        """Finish generations no live process runs: failed, `interrupted`. On one process
        (SQLite) every active one, left by a previous process; where several share the
        database, those whose lease lapsed, and from now on every third of a lease."""
        if self._leases is not None:
            log.info(
                "this process is %s (generation leases of %g s)",
                self._leases.owner,
                self._leases.seconds,
            )
            reaped = await self._reap()
            self._leases.start()
            return reaped
        stale = await self._storage.active_generation_ids()
        for gid in stale:
            generation = await self._storage.generation(gid)
            if generation is None:
                continue
            run = await self._taskless_run(generation)
            await self._endings.fail(run, ProviderError("interrupted", INTERRUPTED_MESSAGE, True))
            log.warning("generation %s was left running by a previous process: failed", gid)
        return stale

    async def _taskless_run(self, generation: GenerationRow) -> Run:
        """A run for a generation no task of this process runs, to record its end. What
        was committed stays: the message keeps the text its deltas carried."""
        run = Run.of(generation)
        run.recovered_text = (await self._storage.streamed_text(generation.id)).strip()
        return run

    async def close(self) -> None:
        """Stop every running generation; each ends as failed with code `interrupted`."""
        # First: a reaper's end under way gives up, too, if the database refuses it.
        self._endings.closing = True
        if self._leases is not None:
            await self._leases.close()
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks)

    # -- the task -------------------------------------------------------------------

    async def _run(self, generation: GenerationRow) -> None:
        run = Run.of(generation)
        if self._leases is not None:
            run.guard = owner_guard(run.generation_id, self._leases.owner)
        # The task runs in a copy of the submitting request's context: name it in logs.
        logs.project_id.set(run.project_id)
        logs.generation_id.set(run.generation_id)
        try:
            async with self._slots:
                run.started = run.stage_started = time.perf_counter()
                try:
                    async with asyncio.timeout(self._timeout):
                        await self._runner.run(run, generation, self._pipeline_of(generation))
                except BaseException as exc:
                    # Settled while the slot is still held: the next queued generation
                    # starts only once this one has ended, in the database too.
                    await self._settle(run, exc)
        except asyncio.CancelledError as exc:  # cancelled while waiting for a slot
            await self._settle(run, exc)

    def _pipeline_of(self, generation: GenerationRow) -> Pipeline:
        pipeline = self._pipelines.get(generation.pipeline)
        if pipeline is None:  # its package was removed since the submit
            raise ProviderError(
                "unknown_pipeline", f"the pipeline {generation.pipeline!r} is not installed"
            )
        return pipeline

    async def _settle(self, run: Run, exc: BaseException) -> None:
        """Record how the run ended. The task's last act: a cancellation that arrives
        while the end is recorded is absorbed once the end has landed."""
        with contextlib.suppress(asyncio.CancelledError):
            try:
                await self._end_for(run, exc)
            except Fenced:  # its end refused too: another process ends it
                self._stopped_fenced(run)

    async def _end_for(self, run: Run, exc: BaseException) -> None:
        if isinstance(exc, Fenced) or run.generation_id in self._fenced:
            self._stopped_fenced(run)
        elif (
            isinstance(exc, asyncio.CancelledError) and run.generation_id in self._cancel_requested
        ):
            self._cancel_requested.discard(run.generation_id)
            await self._endings.cancelled(run)
        else:
            await self._endings.fail(run, self._failure(run, exc))

    def _stopped_fenced(self, run: Run) -> None:
        self._fenced.discard(run.generation_id)
        self._cancel_requested.discard(run.generation_id)
        log.warning(
            "generation %s: fenced, this process no longer holds its lease; its run stops "
            "and writes nothing more (the process that found the lease lapsed ends it)",
            run.generation_id,
        )

    def _failure(self, run: Run, exc: BaseException) -> ProviderError:
        """What a run that stopped with `exc` failed with."""
        if isinstance(exc, asyncio.CancelledError):  # not a cancel: the server stops
            return ProviderError("interrupted", INTERRUPTED_MESSAGE, True)
        if isinstance(exc, TimeoutError):
            message = f"the generation took longer than {self._timeout:g} s"
            return ProviderError("timeout", message, True)
        if isinstance(exc, ProviderError):
            return exc
        if isinstance(exc, JournalRefused):  # busy, full, closing
            log.error("generation %s could not be journaled: %s", run.generation_id, exc)
            return ProviderError("storage_unavailable", STORAGE_MESSAGE, True)
        if isinstance(exc, Exception):
            log.error("generation %s failed unexpectedly", run.generation_id, exc_info=exc)
            return ProviderError("internal_error", "an internal error", False)
        raise exc  # KeyboardInterrupt, SystemExit: not ours to absorb


async def _refuse_if_running(tx: Tx, project_id: str) -> None:
    """One generation at a time in a project: a second is refused while one is active."""
    running = await tx.active_generation(project_id)
    if running is not None:
        raise Conflict(
            "generation_running",
            f"generation {running.id} is still running in this project; "
            "cancel it or wait for it to end",
            generation_id=running.id,
        )


async def _resubmission(
    tx: Tx,
    earlier: GenerationRow,
    prompt: str,
    image_urls: list[str],
    pipeline: str,
    inputs: dict[str, Any],
) -> Submission:
    if (
        earlier.prompt != prompt
        or earlier.image_urls != tuple(image_urls)
        or earlier.pipeline != pipeline
        or dict(earlier.inputs) != inputs
    ):
        raise Conflict(
            "client_request_id_reused",
            "client_request_id was already used for a different request",
            generation_id=earlier.id,
        )
    user = await tx.message(earlier.user_message_id)
    assistant = await tx.message(earlier.assistant_message_id)
    assert user is not None and assistant is not None
    return Submission(earlier, user, assistant, created=False)


def _message(
    project_id: str, generation_id: str, role: str, status: str, content: str, at: int
) -> MessageRow:
    """A new message, created and updated at `at`."""
    return MessageRow(new_id("msg"), project_id, generation_id, role, status, content, at, at)
