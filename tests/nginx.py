"""Debian's nginx in front of a test server, with the documented location block.

One process as the user running the test, everything it writes under tmp_path: its
config, its temp folders, its error log, and an access log of `status method uri` lines.
"""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Final

from tests.conftest import LOOPBACK
from tests.process import free_port

ROOT: Final = Path(__file__).resolve().parent.parent
SNIPPET: Final = ROOT / "deploy" / "nginx-streams.conf"
# Debian puts it in /usr/sbin, which an ordinary user's PATH may not hold.
NGINX: Final = shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin")
START_TIMEOUT: Final = 10.0
ACCESS_LOG: Final = "access.log"

# The built-in page at `/` through the same proxy (the documented block covers /api/).
PAGE_LOCATION: Final = """
location / {{
    proxy_pass http://{upstream};
    proxy_http_version 1.1;
    proxy_set_header Connection "";
}}
"""


def config(tmp_path: Path, port: int, upstream: int, *, page: bool = False) -> str:
    address = f"{LOOPBACK}:{upstream}"
    location = SNIPPET.read_text().replace("127.0.0.1:8080", address)
    if page:
        location += PAGE_LOCATION.format(upstream=address)
    temp = {name: tmp_path / name for name in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")}
    for path in temp.values():
        path.mkdir()
    return f"""
daemon off;
master_process off;  # one process, as the user running the test
pid {tmp_path}/nginx.pid;
error_log {tmp_path}/error.log info;
events {{ worker_connections 256; }}
http {{
    log_format requests '$status $request_method $request_uri';
    access_log {tmp_path / ACCESS_LOG} requests;
    client_body_temp_path {temp["client_body"]};
    proxy_temp_path {temp["proxy"]};
    fastcgi_temp_path {temp["fastcgi"]};
    uwsgi_temp_path {temp["uwsgi"]};
    scgi_temp_path {temp["scgi"]};
    server {{
        listen {LOOPBACK}:{port};
{location}
    }}
}}
"""


def access_log(tmp_path: Path) -> list[tuple[int, str, str]]:
    """What nginx answered so far: (status, method, uri), one per finished request."""
    path = tmp_path / ACCESS_LOG
    if not path.exists():
        return []
    entries = []
    for line in path.read_text().splitlines():
        status, method, uri = line.split(" ", 2)
        entries.append((int(status), method, uri))
    return entries


@asynccontextmanager
async def nginx(tmp_path: Path, upstream: int, *, page: bool = False) -> AsyncIterator[str]:
    """Run nginx in front of the server on port `upstream`; yield nginx's URL. `page`:
    also proxy `/` (the web page), not only the documented `/api/` block."""
    assert NGINX is not None, "nginx is not installed (make test does)"
    port = free_port()
    conf = tmp_path / "nginx.conf"
    conf.write_text(config(tmp_path, port, upstream, page=page))
    process = await asyncio.create_subprocess_exec(
        NGINX, "-c", str(conf), "-p", str(tmp_path), stderr=asyncio.subprocess.DEVNULL
    )
    try:
        async with asyncio.timeout(START_TIMEOUT):
            while True:
                if process.returncode is not None:
                    raise AssertionError((tmp_path / "error.log").read_text())
                try:
                    _, writer = await asyncio.open_connection(LOOPBACK, port)
                except OSError:
                    await asyncio.sleep(0.02)
                    continue
                writer.close()
                await writer.wait_closed()
                break
        yield f"http://{LOOPBACK}:{port}"
    finally:
        process.terminate()
        await process.wait()


async def answered(
    tmp_path: Path, status: int, uri_prefix: str, count: int, timeout: float
) -> list[tuple[int, str, str]]:
    """Wait until nginx has answered `count` requests under `uri_prefix` with `status`."""
    async with asyncio.timeout(timeout):
        while True:
            found = [
                e for e in access_log(tmp_path) if e[0] == status and e[2].startswith(uri_prefix)
            ]
            if len(found) >= count:
                return found
            await asyncio.sleep(0.02)
