"""Debian's nginx, Caddy and HAProxy, each started on a free loopback port in front of a
genstream server, with the recipe from deploy/ that the README documents.

A recipe proxies to 127.0.0.1:8080 and listens on the ports a site uses; a test puts its
own ports, files and (short) timeouts in their place with `substitute`, which fails when
the text it replaces is no longer in the recipe: the documented text is the tested text.

Each proxy is one process as the user running the test, everything it writes in its own
folder: its config, its log, and for nginx its temp folders and an access log of
`status method uri` lines, with the stream routes' lines in the recipe's own format
(deploy/nginx-log-format.conf: no query string) in a second file
(`RunningProxy.access_log`, `RunningProxy.answered`).
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import subprocess
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Final

from tests.conftest import LOOPBACK
from tests.helpers import wait_until
from tests.process import free_port

ROOT: Final = Path(__file__).resolve().parent.parent
DEPLOY: Final = ROOT / "deploy"
README: Final = ROOT / "README.md"
# Where every recipe sends the API: genstream's default address.
RECIPE_UPSTREAM: Final = "127.0.0.1:8080"
START_TIMEOUT: Final = 10.0
STOP_TIMEOUT: Final = 5.0
POLL_SECONDS: Final = 0.02
NGINX_ACCESS_LOG: Final = "access.log"
NGINX_STREAMS_LOG: Final = "streams-access.log"
# The recipe's own log of the stream routes, and the http {} file with its format.
NGINX_RECIPE_LOG: Final = "/var/log/nginx/access.log"
NGINX_LOG_FORMAT: Final = "nginx-log-format.conf"
# A line of genstream_streams: ... "GET /api/projects/x/stream HTTP/1.1" 200 ...
_STREAMS_LINE: Final = re.compile(r'"(?P<method>\S+) (?P<uri>\S+) [^"]*" (?P<status>\d{3}) ')


def _system_binary(name: str) -> str | None:
    # Debian puts nginx and haproxy in /usr/sbin, which an ordinary user's PATH may not hold.
    return shutil.which(name) or shutil.which(name, path="/usr/sbin")


class Kind(StrEnum):
    NGINX = "nginx"
    CADDY = "caddy"
    HAPROXY = "haproxy"


BINARIES: Final = {kind: _system_binary(kind) for kind in Kind}
OPENSSL: Final = shutil.which("openssl")

# Each proxy's recipes in deploy/: the plain one (HTTP/1.1) and the HTTPS one (HTTP/2).
RECIPES: Final = {
    Kind.NGINX: ("nginx-streams.conf", "nginx-streams-h2.conf"),
    Kind.CADDY: ("caddy-streams.caddy", "caddy-streams-h2.caddy"),
    Kind.HAPROXY: ("haproxy-streams.cfg", "haproxy-streams-h2.cfg"),
}


# The built-in page at `/` through the same nginx (the documented block covers /api/).
NGINX_PAGE_LOCATION: Final = """
location / {{
    proxy_pass http://{upstream};
    proxy_http_version 1.1;
    proxy_set_header Connection "";
}}
"""


def recipe(name: str) -> str:
    return (DEPLOY / name).read_text()


def substitute(text: str, changes: Mapping[str, str]) -> str:
    """`text` with each key replaced by its value; each key must occur in it."""
    for old, new in changes.items():
        assert old in text, f"{old!r} is no longer in the recipe: update the test with it"
        text = text.replace(old, new)
    return text


@dataclass(frozen=True)
class Certificate:
    """A self-signed certificate for 127.0.0.1: cert and key, and both in one PEM (HAProxy)."""

    cert: Path
    key: Path
    pem: Path


def make_certificate(directory: Path) -> Certificate:
    assert OPENSSL is not None
    directory.mkdir(parents=True, exist_ok=True)
    cert, key, pem = (directory / name for name in ("cert.pem", "key.pem", "both.pem"))
    subprocess.run(
        [
            *(OPENSSL, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"),
            *("-nodes", "-days", "2", "-subj", f"/CN={LOOPBACK}"),
            *("-addext", f"subjectAltName=IP:{LOOPBACK}", "-keyout", str(key), "-out", str(cert)),
        ],
        check=True,
        capture_output=True,
        timeout=30,
    )
    pem.write_text(cert.read_text() + key.read_text())
    return Certificate(cert, key, pem)


@dataclass(frozen=True)
class Setup:
    """What a test asks of a proxy: its upstream, an idle timeout shorter than the
    recipe's (a proxy syntax duration: "1s"), a certificate for the HTTPS recipe, other
    changes to the plain recipe (to measure it without one of its lines), and (nginx
    only) `page`: also proxy `/`, the web page, not only the documented `/api/`."""

    directory: Path
    port: int
    upstream: int
    idle_timeout: str | None = None
    certificate: Certificate | None = None
    changes: Mapping[str, str] = field(default_factory=dict)
    page: bool = False
    http: str = ""  # nginx only: more of the http {} block (an upstream block)

    def plain_recipe(self, kind: Kind) -> str:
        text = recipe(RECIPES[kind][0]).replace(RECIPE_UPSTREAM, f"{LOOPBACK}:{self.upstream}")
        text = substitute(text, self.changes)
        if self.idle_timeout is not None:
            text = substitute(text, _IDLE_TIMEOUTS[kind](self.idle_timeout))
        return text

    def h2_recipe(self, kind: Kind, changes: Mapping[str, str]) -> str:
        return substitute(recipe(RECIPES[kind][1]), changes)

    def h2_site(self, kind: Kind, plain: str) -> str:
        """The HTTPS recipe of nginx or Caddy, which includes the plain one from a file:
        `plain` written to that file, and the test's address and certificate in place."""
        assert self.certificate is not None
        places = _H2_PLACES[kind]
        included = self.directory / RECIPES[kind][0]
        included.write_text(plain)
        return self.h2_recipe(
            kind,
            {
                places.listen: places.listen_as.format(address=f"{LOOPBACK}:{self.port}"),
                places.cert: str(self.certificate.cert),
                places.key: str(self.certificate.key),
                places.include: str(included),
            },
        )


@dataclass(frozen=True)
class _H2Places:
    """What an HTTPS recipe names that a test puts in its own place: the line that says
    where the site listens and what it becomes (a format string of `address`), the
    certificate and key, and the plain recipe it includes."""

    listen: str
    listen_as: str
    cert: str
    key: str
    include: str


# HAProxy's HTTPS recipe includes nothing: its bind line is the one change (_haproxy).
_H2_PLACES: Final = {
    Kind.NGINX: _H2Places(
        "listen 443 ",
        "listen {address} ",
        "/etc/nginx/certs/example.com.pem",
        "/etc/nginx/certs/example.com.key",
        "/etc/nginx/snippets/nginx-streams.conf",
    ),
    Kind.CADDY: _H2Places(
        "example.com {",
        "https://{address} {{",  # a format string: {{ is the brace
        "/etc/caddy/certs/example.com.pem",
        "/etc/caddy/certs/example.com.key",
        "/etc/caddy/caddy-streams.caddy",
    ),
}


# The recipe lines that bound a quiet stream, and what a test makes of them.
_IDLE_TIMEOUTS: Final[dict[Kind, Callable[[str], dict[str, str]]]] = {
    Kind.NGINX: lambda t: {"proxy_read_timeout 1h;": f"proxy_read_timeout {t};"},
    Kind.CADDY: lambda t: {"read_timeout 1m": f"read_timeout {t}"},
    Kind.HAPROXY: lambda t: {"timeout server 1m": f"timeout server {t}"},
}


def _nginx(setup: Setup) -> tuple[list[str], str]:
    temp = {name: setup.directory / name for name in ("body", "proxy", "fastcgi", "uwsgi", "scgi")}
    for path in temp.values():
        path.mkdir()
    location = setup.plain_recipe(Kind.NGINX)
    location = substitute(location, {NGINX_RECIPE_LOG: str(setup.directory / NGINX_STREAMS_LOG)})
    if setup.page:
        location += NGINX_PAGE_LOCATION.format(upstream=f"{LOOPBACK}:{setup.upstream}")
    if setup.certificate is None:
        server = f"server {{\n    listen {LOOPBACK}:{setup.port};\n{location}\n}}"
    else:
        server = setup.h2_site(Kind.NGINX, location)
    config = f"""
daemon off;
master_process off;  # one process, as the user running the test
pid {setup.directory}/nginx.pid;
error_log stderr info;
events {{ worker_connections 256; }}
http {{
    log_format requests '$status $request_method $request_uri';
    access_log {setup.directory / NGINX_ACCESS_LOG} requests;
{recipe(NGINX_LOG_FORMAT)}
{setup.http}
    client_body_temp_path {temp["body"]};
    proxy_temp_path {temp["proxy"]};
    fastcgi_temp_path {temp["fastcgi"]};
    uwsgi_temp_path {temp["uwsgi"]};
    scgi_temp_path {temp["scgi"]};
{server}
}}
"""
    path = setup.directory / "nginx.conf"
    path.write_text(config)
    return ["-c", str(path), "-p", str(setup.directory), "-e", "stderr"], config


def _caddy(setup: Setup) -> tuple[list[str], str]:
    handle = setup.plain_recipe(Kind.CADDY)
    # No admin endpoint and no certificate management: nothing listens but the site.
    # debug: each failed dial to the upstream is logged (the restart test waits on it).
    # grace_period: on SIGTERM, wait no longer than this for open streams to end.
    options = ["admin off", "debug", "grace_period 100ms", "servers {\n\t\tprotocols h1 h2\n\t}"]
    if setup.certificate is None:
        options.append("auto_https off")
        site = f"http://{LOOPBACK}:{setup.port} {{\n{handle}\n}}"
    else:
        options.append("auto_https disable_redirects")
        site = setup.h2_site(Kind.CADDY, handle)
    config = "{\n" + "".join(f"\t{option}\n" for option in options) + "}\n" + site + "\n"
    path = setup.directory / "Caddyfile"
    path.write_text(config)
    return ["run", "--config", str(path), "--adapter", "caddyfile"], config


def haproxy_stats_socket(directory: Path) -> Path:
    return directory / "haproxy.sock"


def _haproxy(setup: Setup) -> tuple[list[str], str]:
    bind = "bind :443 ssl crt /etc/haproxy/certs/example.com.pem alpn h2,http/1.1"
    if setup.certificate is None:
        listen = f"bind {LOOPBACK}:{setup.port}"
    else:
        listen = f"bind {LOOPBACK}:{setup.port} ssl crt {setup.certificate.pem} alpn h2,http/1.1"
    # The same frontend over plain HTTP/1.1 is the HTTPS recipe with a plain bind line.
    changes = {bind: listen}
    if setup.idle_timeout is not None:
        changes["timeout client 1m"] = f"timeout client {setup.idle_timeout}"
    frontend = setup.h2_recipe(Kind.HAPROXY, changes)
    config = f"""
global
    stats socket {haproxy_stats_socket(setup.directory)} level admin
{frontend}
{setup.plain_recipe(Kind.HAPROXY)}
"""
    path = setup.directory / "haproxy.cfg"
    path.write_text(config)
    return ["-db", "-f", str(path)], config


_CONFIGURE: Final = {Kind.NGINX: _nginx, Kind.CADDY: _caddy, Kind.HAPROXY: _haproxy}


def _configure(kind: Kind, setup: Setup) -> tuple[list[str], str]:
    """Make the proxy's folder and config: its command-line arguments and the config."""
    setup.directory.mkdir(parents=True)
    return _CONFIGURE[kind](setup)


@dataclass(frozen=True)
class RunningProxy:
    kind: Kind
    url: str
    directory: Path
    config: str
    process: asyncio.subprocess.Process

    @property
    def log_path(self) -> Path:
        return self.directory / f"{self.kind}.log"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def access_log(self) -> list[tuple[int, str, str]]:
        """What nginx answered so far: (status, method, uri), one per finished request;
        the stream routes' after the others, their uri without its query string."""
        assert self.kind is Kind.NGINX, f"only nginx is run with an access log, not {self.kind}"
        entries = []
        for line in self.access_log_text(NGINX_ACCESS_LOG).splitlines():
            status, method, uri = line.split(" ", 2)
            entries.append((int(status), method, uri))
        for line in self.access_log_text(NGINX_STREAMS_LOG).splitlines():
            match = _STREAMS_LINE.search(line)
            assert match is not None, line
            entries.append((int(match["status"]), match["method"], match["uri"]))
        return entries

    def access_log_text(self, name: str) -> str:
        path = self.directory / name
        return path.read_text() if path.exists() else ""

    async def answered(
        self, status: int, uri_prefix: str, count: int, timeout: float
    ) -> list[tuple[int, str, str]]:
        """Wait until nginx has answered `count` requests under `uri_prefix` with `status`."""
        found: list[tuple[int, str, str]] = []

        def enough() -> bool:
            found[:] = [
                e for e in self.access_log() if e[0] == status and e[2].startswith(uri_prefix)
            ]
            return len(found) >= count

        await wait_until(enough, timeout, POLL_SECONDS)
        return found


@asynccontextmanager
async def run_proxy(
    kind: Kind,
    directory: Path,
    upstream: int,
    *,
    idle_timeout: str | None = None,
    certificate: Certificate | None = None,
    changes: Mapping[str, str] | None = None,
    page: bool = False,
    http: str = "",
) -> AsyncIterator[RunningProxy]:
    """Run `kind` in the foreground with its config in `directory` (made here), in front
    of genstream on port `upstream`, until the block ends. The options: `Setup`."""
    binary = BINARIES[kind]
    assert binary is not None, f"{kind} is not installed (make test installs it)"
    assert not page or kind is Kind.NGINX, f"only nginx is run with the page at /, not {kind}"
    assert not http or kind is Kind.NGINX, f"only nginx takes more of its http block, not {kind}"
    setup = Setup(
        directory, free_port(), upstream, idle_timeout, certificate, changes or {}, page, http
    )
    arguments, config = _configure(kind, setup)
    # Caddy keeps its data and config under these: in the test's folder, not the user's.
    env = dict(
        os.environ,
        HOME=str(directory),
        XDG_DATA_HOME=str(directory / "data"),
        XDG_CONFIG_HOME=str(directory / "config"),
    )
    scheme = "http" if certificate is None else "https"
    log_path = directory / f"{kind}.log"
    with log_path.open("wb") as log:
        process = await asyncio.create_subprocess_exec(
            binary, *arguments, stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=env
        )
    proxy = RunningProxy(kind, f"{scheme}://{LOOPBACK}:{setup.port}", directory, config, process)
    try:
        await _wait_accepting(proxy, setup.port)
        yield proxy
    finally:
        if process.returncode is None:
            process.terminate()
        try:
            async with asyncio.timeout(STOP_TIMEOUT):
                await process.wait()
        except TimeoutError:
            process.kill()
            await process.wait()


async def _wait_accepting(proxy: RunningProxy, port: int) -> None:
    async def accepting() -> bool:
        if proxy.process.returncode is not None:
            raise AssertionError(f"{proxy.kind} exited at start:\n{proxy.log()}")
        try:
            _, writer = await asyncio.open_connection(LOOPBACK, port)
        except OSError:
            return False
        writer.close()
        await writer.wait_closed()
        return True

    await wait_until(accepting, START_TIMEOUT, POLL_SECONDS)


async def haproxy_stat(proxy: RunningProxy, proxy_name: str, server: str, column: str) -> str:
    """One cell of HAProxy's `show stat` CSV, read from its stats socket."""
    reader, writer = await asyncio.open_unix_connection(haproxy_stats_socket(proxy.directory))
    try:
        writer.write(b"show stat\n")
        await writer.drain()
        lines = (await reader.read()).decode().splitlines()
    finally:
        writer.close()
        await writer.wait_closed()
    header = lines[0].removeprefix("# ").split(",")
    for line in lines[1:]:
        row = dict(zip(header, line.split(","), strict=False))
        if row.get("pxname") == proxy_name and row.get("svname") == server:
            return row[column]
    raise AssertionError(f"no {proxy_name}/{server} in HAProxy's stats:\n{lines}")


async def wait_until_upstream_refused(proxy: RunningProxy, timeout: float = 10.0) -> None:
    """Wait until the proxy has tried genstream's port at least once and found it closed
    (Caddy's debug log names the refused dial; HAProxy counts its retries)."""

    async def refused() -> bool:
        if proxy.kind is Kind.CADDY:
            return "connection refused" in proxy.log()
        if proxy.kind is Kind.HAPROXY:
            return int(await haproxy_stat(proxy, "genstream", "genstream", "wretr") or 0) > 0
        raise AssertionError(f"{proxy.kind} does not hold a request (it answers 502)")

    await wait_until(refused, timeout, POLL_SECONDS)
