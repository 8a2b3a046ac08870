"""nginx with the nchan module, the C reference: its config (bench/nchan.conf), started
in a folder of its own on a loopback port, its master and workers found for /proc.

Debian's `libnginx-mod-nchan` (`make bench` installs it with nginx when missing). Where
it is not installed, `missing()` says why and the benchmark skips nchan.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import string
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from bench import common

NGINX: Final = Path("/usr/sbin/nginx")
MODULE: Final = Path("/usr/lib/nginx/modules/ngx_nchan_module.so")
CONFIG: Final = Path(__file__).with_name("nchan.conf")
# Per worker: the largest subscriber count of `make bench` (5,000), its idle streams
# (5,000), with room to spare; also each worker's descriptor limit.
CONNECTIONS: Final = 16_384
START_SECONDS: Final = 10.0
STOP_SECONDS: Final = 10.0
LOG: Final = "error.log"
PORT_TRIES: Final = 3
ADDRESS_IN_USE: Final = "Address already in use"  # nginx's bind() failure, strerror(EADDRINUSE)


class _Config(string.Template):
    # nginx's own variables ($1, $nchan_channel_id) keep their `$`.
    delimiter = "@"


def missing() -> str | None:
    """Why nchan cannot run here, or None."""
    for path, package in ((NGINX, "nginx"), (MODULE, "libnginx-mod-nchan")):
        if not path.exists():
            return f"{path} is missing (Debian's {package}: `make bench` installs it as root)"
    return None


def config(prefix: Path, port: int, workers: int) -> str:
    return _Config(CONFIG.read_text()).substitute(
        module=MODULE,
        prefix=prefix,
        log=prefix / LOG,
        port=port,
        workers=workers,
        connections=CONNECTIONS,
    )


@dataclass(frozen=True)
class Nginx:
    url: str
    pids: tuple[int, ...]  # the master, then its workers: what /proc sums
    process: subprocess.Popen[bytes]


@contextlib.contextmanager
def running(prefix: Path, workers: int) -> Iterator[Nginx]:
    """nginx with `workers` worker processes in `prefix`, until the block ends."""
    prefix.mkdir(parents=True)
    for attempt in range(1, PORT_TRIES + 1):
        try:
            nginx = _start(prefix, workers)
            break
        except PortTaken:
            # common.free_port's port was taken before nginx bound it (the machine is
            # shared): another port.
            if attempt == PORT_TRIES:
                raise
    try:
        yield nginx
    finally:
        _stop(nginx.process, nginx.pids)


class PortTaken(RuntimeError):
    pass


def _start(prefix: Path, workers: int) -> Nginx:
    port = common.free_port()
    path = prefix / "nginx.conf"
    path.write_text(config(prefix, port, workers))
    # A file, not a pipe: nobody reads nginx's log while it runs, and a full pipe would
    # stop it.
    log = prefix / LOG  # also the config's error_log, from the start on
    log.unlink(missing_ok=True)
    command = [str(NGINX), "-p", str(prefix), "-c", str(path), "-e", str(log)]
    process = subprocess.Popen(command, stdin=subprocess.DEVNULL)
    pids: tuple[int, ...] = (process.pid,)
    try:
        pids += _started(process, port, workers, log)
    except BaseException:
        _stop(process, pids)
        raise
    return Nginx(f"http://{common.LOOPBACK}:{port}", pids, process)


def _started(
    process: subprocess.Popen[bytes], port: int, workers: int, log: Path
) -> tuple[int, ...]:
    """Once the port accepts and every worker is up: the workers' pids."""
    deadline = time.monotonic() + START_SECONDS
    while time.monotonic() < deadline:
        if process.poll() is not None:
            said = log.read_text(errors="replace")[-2000:] if log.exists() else ""
            failure = PortTaken if ADDRESS_IN_USE in said else RuntimeError
            raise failure(f"nginx (nchan) exited with {process.returncode}: {said}")
        children = _children(process.pid)
        if len(children) == workers and _accepts(port):
            return children
        time.sleep(0.05)  # polling a starting process: nothing to wait on but the clock
    raise RuntimeError(f"nginx (nchan) did not start in {START_SECONDS} s")


def _children(pid: int) -> tuple[int, ...]:
    # proc(5): /proc/<pid>/task/<tid>/children lists the task's children (the master is
    # one thread).
    with open(f"/proc/{pid}/task/{pid}/children", "rb") as f:
        return tuple(int(child) for child in f.read().split())


def _accepts(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex((common.LOOPBACK, port)) == 0


def _stop(process: subprocess.Popen[bytes], pids: tuple[int, ...]) -> None:
    """SIGTERM is nginx's fast shutdown: open streams are closed, not waited for. A
    master that does not stop is killed with its workers, which would outlive it."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=STOP_SECONDS)
    except subprocess.TimeoutExpired:
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        process.wait()
