"""genstream for the churn benchmark (bench/churn.py): the product app with its settings
read as `genstream serve` reads them (config.toml, then GENSTREAM_*), plus routes that
only this benchmark registers, to look inside the process between waves of connections.

    GET  /bench/memory  VmRSS and VmHWM, pymalloc's arenas and glibc's heap (mallinfo2),
                        and with --tracemalloc the Python objects alive and the lines
                        whose allocations grew most since the previous call
    POST /bench/trim    gc.collect(), then glibc's malloc_trim(0): the same, before and after

The question they answer (issue 11 item 8): is memory that stays after replay bursts
held by Python objects (a leak: tracemalloc's total grows), or by an allocator keeping
the pages of a peak (tracemalloc flat, RSS not)?
"""

from __future__ import annotations

import argparse
import collections
import ctypes
import ctypes.util
import gc
import logging
import os
import re
import sys
import tempfile
import tracemalloc
from typing import Any, Final

from aiohttp import web

from bench import common
from bench.server_genstream import serve_app
from service import config
from service.web.app import create_app

TOP: Final = 12
# sys._debugmallocstats() lines such as "# arenas allocated current           =       23".
_MALLOC_STAT: Final = re.compile(
    rb"^# (arenas allocated current|bytes in allocated blocks)\s*=\s*([\d,]+)"
)


class _MallInfo2(ctypes.Structure):
    # glibc 2.33+ mallinfo2(3): every field a size_t.
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in (
            "arena",
            "ordblks",
            "smblks",
            "hblks",
            "hblkhd",
            "usmblks",
            "fsmblks",
            "uordblks",
            "fordblks",
            "keepcost",
        )
    ]


_LIBC: Final = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
_HAS_MALLINFO2: Final = hasattr(_LIBC, "mallinfo2")
if _HAS_MALLINFO2:
    _LIBC.mallinfo2.restype = _MallInfo2
_LIBC.malloc_trim.argtypes = [ctypes.c_size_t]
_LIBC.malloc_trim.restype = ctypes.c_int

_previous: list[tracemalloc.Snapshot] = []


def _proc_status() -> dict[str, int]:
    """VmRSS and VmHWM of this process, in bytes (proc(5))."""
    wanted = {b"VmRSS:": "rss", b"VmHWM:": "hwm"}
    found: dict[str, int] = {}
    with open("/proc/self/status", "rb") as f:
        for line in f:
            key = line.split(maxsplit=1)[0]
            if key in wanted:
                found[wanted[key]] = int(line.split()[1]) * 1024
    return found


def _pymalloc() -> dict[str, int]:
    """pymalloc's arenas (1 MiB each in 3.11, handed back only when wholly empty) and the
    bytes of live small objects in them. sys._debugmallocstats writes to C's stderr, so
    that descriptor is pointed at a file for the call."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as out:
        os.dup2(out.fileno(), 2)
        try:
            sys._debugmallocstats()
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        out.seek(0)
        stats = {
            m.group(1).decode(): int(m.group(2).replace(b",", b""))
            for m in map(_MALLOC_STAT.match, out.read().splitlines())
            if m is not None
        }
    return {
        "pymalloc_arenas": stats.get("arenas allocated current", 0),
        "pymalloc_used": stats.get("bytes in allocated blocks", 0),
    }


def _glibc() -> dict[str, int]:
    """glibc's heap: bytes in use, bytes free but kept (what malloc_trim can return)."""
    if not _HAS_MALLINFO2:
        return {}
    info = _LIBC.mallinfo2()
    return {
        "glibc_heap": info.arena,
        "glibc_in_use": info.uordblks,
        "glibc_free": info.fordblks,
        "glibc_mmapped": info.hblkhd,
    }


def _gc_objects() -> dict[str, Any]:
    """Objects the collector tracks (those made since settle_heap's freeze), and the most
    numerous types: a leak of whole connections shows here as RequestHandler, Request."""
    objects = gc.get_objects()
    types = collections.Counter(type(o).__qualname__ for o in objects)
    return {"gc_objects": len(objects), "gc_types": dict(types.most_common(TOP))}


def _python_objects() -> dict[str, Any]:
    """With tracemalloc on: bytes held by live Python allocations, and the lines whose
    allocations grew most since the previous call (the first call is the baseline)."""
    if not tracemalloc.is_tracing():
        return {}
    current, peak = tracemalloc.get_traced_memory()
    snapshot = tracemalloc.take_snapshot().filter_traces(
        (tracemalloc.Filter(False, tracemalloc.__file__),)
    )
    growth: list[dict[str, Any]] = []
    if _previous:
        # One line when tracing one frame; the whole call path (innermost first) with more.
        key = "lineno" if tracemalloc.get_traceback_limit() == 1 else "traceback"
        for stat in snapshot.compare_to(_previous[0], key)[:TOP]:
            where = " < ".join(f"{f.filename}:{f.lineno}" for f in reversed(stat.traceback))
            growth.append({"where": where, "bytes": stat.size_diff, "blocks": stat.count_diff})
    _previous[:] = [snapshot]
    tracemalloc.reset_peak()
    return {"traced": current, "traced_peak": peak, "growth": growth}


def memory() -> dict[str, Any]:
    return {
        **_proc_status(),
        **_pymalloc(),
        **_glibc(),
        **_gc_objects(),
        **_python_objects(),
    }


async def memory_route(request: web.Request) -> web.Response:
    return web.json_response(memory())


async def trim_route(request: web.Request) -> web.Response:
    before = memory()
    gc.collect()
    trimmed = _LIBC.malloc_trim(0)
    return web.json_response({"before": before, "after": memory(), "released": bool(trimmed)})


async def serve(port: int) -> None:
    settings = config.load()
    app = create_app(settings)
    app.router.add_get("/bench/memory", memory_route)
    app.router.add_post("/bench/trim", trim_route)
    await serve_app(settings, app, port)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument(
        "--tracemalloc", type=int, default=0, help="frames per traceback; 0: tracemalloc off"
    )
    args = parser.parse_args()
    if args.tracemalloc:
        tracemalloc.start(args.tracemalloc)
    logging.basicConfig(level=logging.WARNING)
    common.raise_nofile()
    common.run(serve(args.port))


if __name__ == "__main__":
    main()
