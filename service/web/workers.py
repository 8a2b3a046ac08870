"""`genstream serve --workers N`: N server processes on one port, and their supervisor.

Each worker is a whole genstream process (`python -m service serve`, its own event loop,
journal, broker, streams and running generations) whose listening socket has
SO_REUSEPORT: the kernel spreads new connections over the sockets bound to the port
(socket(7), SO_REUSEPORT: "incoming connections and datagrams are distributed to the
server sockets"; every socket must set it, under one effective user id). aiohttp's own
answer to several cores is several processes behind a proxy or gunicorn's aiohttp worker
(docs.aiohttp.org, "Server Deployment"); `TCPSite(reuse_port=True)` lets them share
the port without either. The processes share nothing but the database, which is why
this needs `storage.backend = "postgres"` (README "Running several processes").

The supervisor is this module's `supervise`: it starts the workers, forwards SIGTERM and
SIGINT to them (each stops gracefully within `server.shutdown_grace_seconds`, a second
signal forces it, as for one process), and restarts a worker that dies while serving,
with an error line: at most `server.worker_restarts` within RESTART_WINDOW_SECONDS, and
past that it stops the others and exits 1, so the process manager (systemd, a container
runtime) sees a failure that restarting one worker does not cure. A worker started next
to running ones is safe on postgres, the one backend with several workers: the start's
recovery ends only generations whose lease lapsed (generation/lifecycle.py `recover`),
not its siblings', and the dead worker's are ended by a live process's lease reaper.

The handshake, over two pipes per worker (the worker's end named by `--worker-pipes`):
the worker sets its app up (storage opened, stale sessions closed, generations left
running recovered) and writes SET_UP; when every worker has, the supervisor writes GO
and each starts listening and writes LISTENING. So no worker takes a request before
every worker's recovery is done, and one that cannot start (PostgreSQL unreachable)
fails the start before any listens. A restarted worker goes through the same steps on
its own. The supervisor keeps its end of GO open until the worker has exited: a worker
that reads its end of file (the supervisor was killed) stops on its own, and warns.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Final

from service.config import Settings

log = logging.getLogger(__name__)

SET_UP: Final = b"s"
GO: Final = b"g"
LISTENING: Final = b"l"
# Beyond the grace each worker keeps for itself, for the interpreter to exit.
EXIT_MARGIN_SECONDS: Final = 5.0
EXIT_FAILED: Final = 1
# server.worker_restarts counts the restarts within this much time.
RESTART_WINDOW_SECONDS: Final = 60.0
WORKER_PIPES_OPTION: Final = "--worker-pipes"


class WorkerAborted(Exception):
    """The supervisor gave up before this worker was told to listen."""


async def _pipe_reader(fd: int) -> tuple[asyncio.StreamReader, asyncio.BaseTransport]:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    transport, _ = await loop.connect_read_pipe(
        lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(fd, "rb", buffering=0)
    )
    return reader, transport


# -- the worker's side ----------------------------------------------------------------


class WorkerLink:
    """A worker's two pipe ends: `status` written to the supervisor, `control` read."""

    def __init__(self, status: int, control: int) -> None:
        self._status = status
        self._control = control
        self._watch: asyncio.Task[None] | None = None

    @classmethod
    def parse(cls, value: str) -> WorkerLink:
        status, control = (int(fd) for fd in value.split(","))
        return cls(status, control)

    async def set_up(self) -> None:
        """Say the app is set up, then wait until every worker is: WorkerAborted if the
        supervisor gave up meanwhile (it closes its end instead of writing GO)."""
        os.write(self._status, SET_UP)
        self._reader, self._transport = await _pipe_reader(self._control)
        if await self._reader.read(1) != GO:
            self._transport.close()
            raise WorkerAborted("the supervisor stopped the start")

    def listening(self, stop: Callable[[], None]) -> None:
        """Say this worker listens, and call `stop` if the supervisor goes away."""
        os.write(self._status, LISTENING)
        os.close(self._status)
        self._watch = asyncio.create_task(self._watch_supervisor(stop), name="supervisor")

    async def _watch_supervisor(self, stop: Callable[[], None]) -> None:
        await self._reader.read()  # nothing more is ever written: returns at its end
        self._transport.close()
        log.warning("the supervisor is gone: stopping")
        stop()


# -- the supervisor -------------------------------------------------------------------


@dataclass
class _Worker:
    number: int
    process: asyncio.subprocess.Process
    status: asyncio.StreamReader
    transports: list[asyncio.BaseTransport]
    control: int  # the supervisor's end of GO; -1 once closed
    told_go: bool = False

    @property
    def pid(self) -> int:
        return self.process.pid

    def go(self) -> None:
        os.write(self.control, GO)
        self.told_go = True

    def close_control(self) -> None:
        if self.control >= 0:
            os.close(self.control)
            self.control = -1

    def close(self) -> None:
        self.close_control()
        for transport in self.transports:
            transport.close()

    async def says(self, word: bytes) -> bool:
        """Whether the worker wrote `word` (False: it closed its end, and has exited)."""
        if await self.status.read(1) == word:
            return True
        await self.process.wait()  # it closes its end only by exiting
        return False


async def _start_worker(number: int, module: str, argv: Sequence[str]) -> _Worker:
    status_read, status_write = os.pipe()
    control_read, control_write = os.pipe()
    try:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            module,
            *argv,
            WORKER_PIPES_OPTION,
            f"{status_write},{control_read}",
            pass_fds=(status_write, control_read),
            # Its own process group: a terminal's Ctrl-C reaches the supervisor alone,
            # which forwards it once (twice would force each worker's exit).
            start_new_session=True,
        )
    finally:
        os.close(status_write)
        os.close(control_read)
    status, transport = await _pipe_reader(status_read)
    return _Worker(number, process, status, [transport], control_write)


class _Supervisor:
    def __init__(self, settings: Settings, argv: Sequence[str], count: int, module: str) -> None:
        self._settings = settings
        self._argv = argv
        self._module = module
        self._count = count
        self.workers: list[_Worker] = []
        self._signalled = asyncio.Event()
        self._signal = signal.SIGTERM
        self._restarts: deque[float] = deque()  # when each restart within the window was

    def on_signal(self, sig: signal.Signals) -> None:
        self._signalled.set()
        self._signal = sig
        for worker in self.workers:
            if worker.process.returncode is None:
                worker.process.send_signal(sig)

    async def run(self) -> int:
        for number in range(1, self._count + 1):
            self.workers.append(await _start_worker(number, self._module, self._argv))
        if not await self._all_say(self.workers, SET_UP):
            return await self._stop_all("before it was set up")
        for worker in self.workers:
            worker.go()
        if not await self._all_say(self.workers, LISTENING):
            return await self._stop_all("before it was listening")
        server = self._settings.server
        log.info(
            "genstream: %d workers listening on http://%s:%d/ (pids %s)",
            self._count,
            server.host,
            server.port,
            ", ".join(str(w.pid) for w in self.workers),
        )
        while (dead := await self._first_exit()) is not None and self._may_restart():
            log.error(
                "genstream: worker %d (pid %d) exited with status %d while serving: restarting it",
                dead.number,
                dead.pid,
                dead.process.returncode,
            )
            await self._restart(dead)
        if dead is not None and self._settings.server.worker_restarts:
            log.error(
                "genstream: worker %d died after %d restarts within %g s "
                "(server.worker_restarts): giving up",
                dead.number,
                len(self._restarts),
                RESTART_WINDOW_SECONDS,
            )
        return await self._stop_all("while serving")

    async def _first_exit(self) -> _Worker | None:
        """The first worker to exit while serving; None once a signal came."""
        exits = {asyncio.create_task(w.process.wait()): w for w in self.workers}
        signalled = asyncio.create_task(self._signalled.wait())
        done, pending = await asyncio.wait([signalled, *exits], return_when=asyncio.FIRST_COMPLETED)
        for task in pending:
            task.cancel()
        if self._signalled.is_set():
            return None
        return next(exits[task] for task in done if task in exits)

    def _may_restart(self) -> bool:
        """Whether a restart now stays within server.worker_restarts; counted if so."""
        now = time.monotonic()
        while self._restarts and self._restarts[0] <= now - RESTART_WINDOW_SECONDS:
            self._restarts.popleft()
        if len(self._restarts) >= self._settings.server.worker_restarts:
            return False
        self._restarts.append(now)
        return True

    async def _restart(self, dead: _Worker) -> None:
        """Start a worker in the dead one's place, through the same handshake. One that
        exits before it listens is the next `_first_exit`."""
        dead.close()
        worker = await _start_worker(dead.number, self._module, self._argv)
        self.workers[self.workers.index(dead)] = worker
        if self._signalled.is_set():  # came while it started: on_signal did not see it
            worker.process.send_signal(self._signal)
            return
        if not await self._all_say([worker], SET_UP):
            return
        worker.go()
        if await self._all_say([worker], LISTENING):
            log.info("genstream: worker %d restarted (pid %d)", worker.number, worker.pid)

    async def _all_say(self, workers: Sequence[_Worker], word: bytes) -> bool:
        """Every one of `workers` says `word`, unless one exits first or a signal comes."""
        signalled = asyncio.create_task(self._signalled.wait())
        pending: set[asyncio.Task[bool]] = {signalled}
        pending.update(asyncio.create_task(w.says(word)) for w in workers)
        while True:
            done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            said = signalled not in done and all(task.result() for task in done)
            if not said or pending == {signalled}:
                break
        for task in pending:
            task.cancel()
        return said

    async def _stop_all(self, when: str) -> int:
        if self._signalled.is_set():  # asked to stop: not a failure of theirs
            return await self._wait_all()
        for worker in self.workers:
            code = worker.process.returncode
            if code is not None:
                log.error(
                    "genstream: worker %d (pid %d) exited with status %d %s: stopping the others",
                    worker.number,
                    worker.pid,
                    code,
                    when,
                )
        self.on_signal(signal.SIGTERM)
        await self._wait_all()
        return EXIT_FAILED

    async def _wait_all(self) -> int:
        """Wait for every worker (within its grace, then kill it); 0 if all exited 0."""
        for worker in self.workers:
            if not worker.told_go:
                worker.close_control()  # a worker still waiting for GO aborts its start
        limit = self._settings.server.shutdown_grace_seconds + EXIT_MARGIN_SECONDS
        codes: list[int] = []
        for worker in self.workers:
            try:
                async with asyncio.timeout(limit):
                    codes.append(await worker.process.wait())
            except TimeoutError:
                log.error(
                    "genstream: worker %d (pid %d) did not stop: killed", worker.number, worker.pid
                )
                worker.process.kill()
                codes.append(await worker.process.wait())
            # Its GO pipe only now: a worker that reads its end while it stops would take
            # it for the supervisor's death, and warn of it, on every normal stop.
            worker.close()
        if any(codes):
            log.error("genstream: workers exited with status %s", ", ".join(map(str, codes)))
        # One status for all (0, or 130 after a second signal), else a failure.
        return codes[0] if len(set(codes)) == 1 and codes[0] >= 0 else EXIT_FAILED


async def supervise(
    settings: Settings, argv: Sequence[str], count: int, module: str = "service"
) -> int:
    """Run `count` workers (`python -m service` with `argv`, each told its pipes) until
    SIGTERM or SIGINT, or until one of them exits; the exit status for the command.
    `module`: another to run as each worker (the benchmark's server, bench/)."""
    supervisor = _Supervisor(settings, argv, count, module)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, supervisor.on_signal, sig)
    return await supervisor.run()
