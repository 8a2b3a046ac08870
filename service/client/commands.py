"""The client subcommands of `genstream`: new, generate, tail, status, publish.

Each is a coroutine taking a connected GenstreamClient and returning the exit code.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import signal
import sys
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, TextIO, TypeVar

import orjson

from service.client.api import Backoff, Event, GenstreamClient, GenstreamError
from service.client.outdir import write_file
from service.client.terminal import Display, printable, shown
from service.paths import UnsafePath, check_path
from service.protocol import EventType as ev

EXIT_OK: Final = 0
EXIT_FAILED: Final = 1  # the generation failed, or the API said no
EXIT_CANCELLED: Final = 3  # cancelled by someone else
EXIT_INTERRUPTED: Final = 130  # Ctrl+C: 128 + SIGINT, as shells report it
EXIT_BROKEN_PIPE: Final = 141  # 128 + SIGPIPE: the reader of stdout went away
# How long Ctrl+C waits for the server to confirm a submission or a cancellation.
INTERRUPT_GRACE_SECONDS: Final = 10.0
DELTA_PREVIEW_CHARS: Final = 60
# A person is waiting at a terminal: give up on a dead server after a few seconds
# (about 0.5 + 1 + 2 s, stretched by the jitter). Once the server has sent `retry:`,
# reconnecting a stream waits what it asked for.
CLI_ATTEMPTS: Final = 4
CLI_BACKOFF: Final = Backoff(base_seconds=0.5)

# What the service itself emits; any other type in a generation is its pipeline's own.
BUILT_IN_TYPES: Final = frozenset(ev)

T = TypeVar("T")


async def until_interrupted(work: Coroutine[Any, Any, T]) -> tuple[bool, asyncio.Task[T]]:
    """Run `work` until it ends or SIGINT arrives, whichever is first: (interrupted, task).

    While this runs SIGINT only sets a flag, so the caller can clean up (cancel a
    generation) instead of dying mid-call. A second SIGINT after it returns is the
    default again: KeyboardInterrupt.
    """
    loop = asyncio.get_running_loop()
    interrupted = asyncio.Event()
    loop.add_signal_handler(signal.SIGINT, interrupted.set)
    task = asyncio.ensure_future(work)
    waiter = asyncio.ensure_future(interrupted.wait())
    try:
        await asyncio.wait({task, waiter}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        loop.remove_signal_handler(signal.SIGINT)
        waiter.cancel()
    return interrupted.is_set(), task


# -- new, status -------------------------------------------------------------------------


async def new(client: GenstreamClient, name: str, out: TextIO) -> int:
    project = await client.create_project(name)
    print(project["id"], file=out)
    return EXIT_OK


async def status(client: GenstreamClient, project_id: str, as_json: bool, out: TextIO) -> int:
    project = await client.project(project_id)
    files = await client.files(project_id)
    if as_json:
        out.write(orjson.dumps({**project, "files": files}).decode() + "\n")
        return EXIT_OK
    lines = [
        f"project     {project['id']}  {printable(project['name'])}",
        f"status      {project['status']}",
    ]
    active = project["active_generation"]
    if active is not None:
        lines.append(
            f"generation  {active['id']}  {active['status']}, "
            f"stage {active['stage']} {active['progress']}%"
        )
    lines.append(f"last event  {project['last_event_id']}")
    lines.append(f"files       {len(files)}")
    lines.extend(f"  {shown(f['path'])}  {f['size']} bytes" for f in files)
    out.write("\n".join(lines) + "\n")
    return EXIT_OK


# -- publish ---------------------------------------------------------------------------


async def publish(
    client: GenstreamClient, project_id: str, type_: str, data: dict[str, Any], out: TextIO
) -> int:
    """Publish an app event; print it as stored, one JSON line (as `tail --json` would)."""
    event = await client.publish(project_id, type_, data)
    out.write(event_json(event) + "\n")
    return EXIT_OK


# -- tail ------------------------------------------------------------------------------


async def tail(
    client: GenstreamClient, project_id: str, after: int | None, as_json: bool, out: TextIO
) -> int:
    """Follow the project's events until Ctrl+C (exit 130)."""

    async def follow() -> None:
        async for event in client.stream(project_id, after):
            out.write(event_json(event) if as_json else describe(event))
            out.write("\n")
            out.flush()

    interrupted, task = await until_interrupted(follow())
    if interrupted:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        return EXIT_INTERRUPTED
    task.result()  # the stream only ends by an error: raise it
    return EXIT_OK


def event_json(event: Event) -> str:
    """One event as one line of JSON: the same object as the API's /events."""
    return orjson.dumps(event.as_dict()).decode()


def describe(event: Event) -> str:
    """One event as one readable line."""
    data = event.data
    detail = ""
    if event.type in (ev.MESSAGE_CREATED, ev.MESSAGE_UPDATED):
        message = data["message"]
        content = str(message.get("content", ""))
        detail = f"{message.get('role', 'assistant')} {message['status']}: {_preview(content)}"
    elif event.type == ev.MESSAGE_DELTA:
        detail = _preview(data["delta"])
    elif event.type == ev.STAGE:
        detail = f"{data['label']} {data['status']} {data['progress']}%"
    elif event.type in (ev.FILE_STARTED, ev.FILE_DELTA):
        detail = shown(str(data["path"]))
        if event.type == ev.FILE_DELTA:
            detail += f" +{len(data['delta'])} chars"
    elif event.type == ev.FILE_COMPLETED:
        detail = f"{shown(str(data['path']))} {data['size']} bytes"
    elif event.type == ev.VALIDATION:
        detail = f"{data['check']} {'ok' if data['ok'] else 'FAILED'} {data.get('detail') or ''}"
    elif event.type == ev.GENERATION_STARTED:
        detail = f"{data.get('provider')} {data.get('model')}"
    elif event.type == ev.GENERATION_COMPLETED:
        detail = str(data.get("summary", ""))
    elif event.type == ev.GENERATION_FAILED:
        detail = f"{data['code']}: {data['message']}"
    generation = f" {event.generation_id}" if event.generation_id else ""
    line = f"{event.id} {event.type}{generation} {detail}".rstrip()
    return printable(line).replace("\n", "⏎")


def _preview(text: str) -> str:
    flat = text.replace("\n", "⏎")
    return flat if len(flat) <= DELTA_PREVIEW_CHARS else flat[: DELTA_PREVIEW_CHARS - 1] + "…"


# -- generate ------------------------------------------------------------------------


@dataclass
class _Files:
    """Files as their deltas arrive; a file counts once it is completed. A completed
    file whose path this side refuses (paths.check_path: the server may not be ours)
    is kept out of `completed`, with the reason, so it is never shown as written."""

    typing: dict[str, list[str]] = field(default_factory=dict)
    completed: dict[str, tuple[str, int, str]] = field(default_factory=dict)  # content,size,sha
    refused: dict[str, str] = field(default_factory=dict)  # path: why

    def apply(self, event: Event) -> None:
        path = event.data.get("path")
        if not isinstance(path, str):
            return
        if event.type == ev.FILE_STARTED:
            self.typing[path] = []
        elif event.type == ev.FILE_DELTA:
            self.typing.setdefault(path, []).append(event.data["delta"])
        elif event.type == ev.FILE_COMPLETED:
            content = "".join(self.typing.pop(path, []))
            try:
                check_path(path)
            except UnsafePath as exc:
                self.refused[path] = str(exc)
                return
            self.completed[path] = (content, event.data["size"], event.data["sha256"])


@dataclass
class GenerateOptions:
    project_id: str
    prompt: str
    image_urls: list[str]
    out_dir: Path | None
    pipeline: str | None = None  # None: the project's default, else the server's
    inputs: dict[str, Any] | None = None  # the pipeline's inputs object


async def generate(client: GenstreamClient, options: GenerateOptions, display: Display) -> int:
    """Submit, stream to the display, write the files on success; Ctrl+C cancels."""
    interrupted, submitting = await until_interrupted(
        client.generate(
            options.project_id,
            options.prompt,
            options.image_urls or None,
            pipeline=options.pipeline,
            inputs=options.inputs,
        )
    )
    if interrupted:
        # The server may have the generation already: give the answer a moment, so it
        # can be cancelled rather than left running.
        display.note("interrupted: waiting for the submission to settle...", "warn")
        done, _ = await asyncio.wait({submitting}, timeout=INTERRUPT_GRACE_SECONDS)
        if not done:
            submitting.cancel()
            display.note("no answer from the server; check with `genstream status`", "error")
            return EXIT_INTERRUPTED
    submitted = submitting.result()
    generation_id: str = submitted["generation"]["id"]
    if interrupted:
        return await _cancel(client, generation_id, display)
    display.note(f"generation {generation_id}", "dim")

    files = _Files()
    interrupted, following = await until_interrupted(_follow(client, generation_id, display, files))
    if interrupted:
        following.cancel()
        await asyncio.gather(following, return_exceptions=True)
        return await _cancel(client, generation_id, display)
    terminal = following.result()
    display.finish()
    return await _conclude(client, options, terminal, files, display)


async def _follow(
    client: GenstreamClient, generation_id: str, display: Display, files: _Files
) -> Event:
    terminal: Event | None = None
    async for event in client.stream_generation(generation_id):
        files.apply(event)
        _show(event, display, files)
        if event.terminal:
            terminal = event
    if terminal is None:  # the stream ends only after a terminal event
        raise GenstreamError(0, "stream_ended", "the stream ended before the generation did")
    return terminal


def _show(event: Event, display: Display, files: _Files) -> None:
    data = event.data
    if event.type == ev.MESSAGE_DELTA:
        display.chat(data["delta"])
    elif event.type == ev.STAGE:
        display.progress(data["label"], data["progress"])
    elif event.type == ev.FILE_COMPLETED:
        refused = files.refused.get(data["path"])
        if refused is None:
            display.note(f"✓ {shown(data['path'])}  {data['size']} bytes", "ok")
        else:
            display.note(_refused(data["path"], refused), "error")
    elif event.type == ev.VALIDATION and not data["ok"]:
        where = f"{shown(str(data['path']))}: " if data.get("path") else ""
        display.note(f"! {where}{data['check']}: {data.get('detail') or ''}", "warn")
    elif event.type not in BUILT_IN_TYPES:
        # A pipeline's own event (quiz.question, page.section): its type and a glimpse.
        display.note(f"· {event.type} {_preview(orjson.dumps(data).decode())}", "dim")


async def _conclude(
    client: GenstreamClient,
    options: GenerateOptions,
    terminal: Event,
    files: _Files,
    display: Display,
) -> int:
    if terminal.type == ev.GENERATION_FAILED:
        display.note(f"failed: {terminal.data['code']}: {terminal.data['message']}", "error")
        return EXIT_FAILED
    if terminal.type == ev.GENERATION_CANCELLED:
        display.note("cancelled", "warn")
        return EXIT_CANCELLED
    summary = terminal.data.get("summary")
    display.note(f"completed{': ' + str(summary) if summary else ''}", "ok")
    if options.out_dir is None:
        return EXIT_OK
    return await _write_files(client, options, files, display)


async def _write_files(
    client: GenstreamClient, options: GenerateOptions, files: _Files, display: Display
) -> int:
    """Write what the generation completed; the files the server now holds for it."""
    assert options.out_dir is not None
    options.out_dir.mkdir(parents=True, exist_ok=True)
    written = 0
    wanted = len(files.completed) + len(files.refused)
    for path, (typed, size, sha256) in files.completed.items():
        content = typed
        raw = typed.encode()
        if len(raw) != size or hashlib.sha256(raw).hexdigest() != sha256:
            # Not what the server stored (it should be): take the stored copy.
            content = (await client.file(options.project_id, path))["content"]
        try:
            write_file(options.out_dir, path, content)
        except UnsafePath as exc:  # a symbolic link in the way
            display.note(_refused(path, str(exc)), "error")
        except OSError as exc:
            display.note(f"✗ {shown(path)}: not written ({exc})", "error")
        else:
            written += 1
    display.note(f"wrote {written} of {wanted} files under {options.out_dir}", "dim")
    # Not 0: a script's next step (`&& make`) must not run on a directory that lacks
    # files the generation wrote.
    return EXIT_OK if written == wanted else EXIT_FAILED


def _refused(path: str, reason: str) -> str:
    return f"✗ {shown(path)}: refused ({reason})"


async def _cancel(client: GenstreamClient, generation_id: str, display: Display) -> int:
    display.finish()
    display.note(f"cancelling {generation_id}...", "warn")
    try:
        async with asyncio.timeout(INTERRUPT_GRACE_SECONDS):
            final = await client.cancel(generation_id)
    except (GenstreamError, TimeoutError) as exc:
        display.note(f"could not cancel {generation_id}: {exc}", "error")
        return EXIT_INTERRUPTED
    display.note(f"generation {generation_id} {final['status']}", "warn")
    return EXIT_INTERRUPTED


def run(command: Callable[[GenstreamClient], Awaitable[int]], url: str, token: str | None) -> int:
    """Connect, run one command, turn API errors into a message and exit code 1."""

    async def main() -> int:
        async with GenstreamClient(
            url, token, max_attempts=CLI_ATTEMPTS, backoff=CLI_BACKOFF
        ) as client:
            return await command(client)

    try:
        return asyncio.run(main())
    except GenstreamError as exc:
        print(f"genstream: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except BrokenPipeError:
        # The reader left (`genstream tail P | head`): stop quietly. Python flushes stdout
        # at exit, which would fail again; point it at /dev/null (Python docs, "Note on
        # SIGPIPE").
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_BROKEN_PIPE
    except KeyboardInterrupt:  # a second Ctrl+C, while cleaning up after the first
        return EXIT_INTERRUPTED
