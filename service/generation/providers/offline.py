"""The built-in provider: no network, deterministic, writes a small real project.

`render` picks a project template by keywords in the prompt and writes it in the
output format of service.generation.parser: a short chat answer, the files, a closing line.
`OfflineProvider.stream` sends that text in ~4-character tokens at a steady rate.

The prompt is untrusted: it reaches the files only as one line with no `<` or `>`
(so it can never form a tag line) and escaped for each file's syntax.
"""

from __future__ import annotations

import asyncio
import html
import json
import keyword
import math
import re
import unicodedata
from collections.abc import AsyncGenerator, Mapping
from dataclasses import dataclass
from string import Template
from typing import Final

from service.generation.providers.base import Chunk, ModelRequest, Usage
from service.paths import UnsafePath, check_path

# Like a model's tokens: a few word characters or symbols, with the whitespace before
# them. Every character falls in one alternative, so the tokens join back to the text.
_TOKEN: Final = re.compile(r"\s*\w{1,4}|\s*[^\w\s]{1,3}|\s+")
_WORD: Final = re.compile(r"[a-z0-9]+")
# Words that say nothing about the project, left out of its name.
_STOPWORDS: Final = frozenset(
    {"a", "an", "and", "build", "create", "for", "make", "me", "my", "of", "please", "the", "to"}
)
MAX_SUMMARY: Final = 200
MAX_NAME_WORDS: Final = 3


class OfflineProvider:
    """Streams `render(request)` at `tokens_per_second` (0 = as fast as possible)."""

    name = "offline"
    model: str = "offline-1"
    # At full speed, tokens per chunk: one chunk per token would only cost overhead.
    BURST_TOKENS: Final = 16

    def __init__(self, tokens_per_second: float) -> None:
        if not math.isfinite(tokens_per_second) or tokens_per_second < 0:
            raise ValueError(f"tokens_per_second must be >= 0, got {tokens_per_second}")
        self.tokens_per_second = tokens_per_second

    async def stream(self, request: ModelRequest) -> AsyncGenerator[Chunk, None]:
        text = render(request)
        tokens = tokenize(text)
        usage = Usage(len(request.prompt) // 4 + 1, len(tokens))
        step = 1 if self.tokens_per_second else self.BURST_TOKENS
        loop = asyncio.get_running_loop()
        start = loop.time()
        sent = 0
        for first in range(0, len(tokens), step):
            await self._wait_for(first, start, loop)
            piece = "".join(tokens[first : first + step])
            sent += len(piece)
            last = first + step >= len(tokens)
            yield Chunk(text=piece, usage=usage if last else None, progress=sent / len(text))

    async def _wait_for(self, token: int, start: float, loop: asyncio.AbstractEventLoop) -> None:
        if not self.tokens_per_second:
            # No pacing, but let the loop run other tasks between chunks.
            await asyncio.sleep(0)
            return
        # Each token is due at a time counted from the start, so late wake-ups do not
        # add up to drift: a late token is sent at once and the next is on time again.
        delay = start + token / self.tokens_per_second - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)


def tokenize(text: str) -> list[str]:
    """Split into ~4-character tokens; `"".join(tokenize(t)) == t`."""
    return _TOKEN.findall(text)


def render(request: ModelRequest) -> str:
    """The provider's whole output for `request`: chat text, files, closing line."""
    context = _Context.of(request)
    template = _choose_template(context, request)
    existing = {record.path for record in request.files}
    files = template.files(context)
    parts = [_intro(template, context, files, existing), "\n"]
    for path, content in files:
        parts += [f'<file path="{path}">\n', content, "</file>\n"]
    parts.append(template.closing_line(context))
    return "".join(parts)


def _intro(
    template: _Template, context: _Context, files: list[tuple[str, str]], existing: set[str]
) -> str:
    listing = ", ".join(path for path, _ in files)
    topic = context.summary.rstrip(".")
    if not existing:
        return f"I'll build {template.blurb} for: {topic}. Files: {listing}."
    rewritten = sum(path in existing for path, _ in files)
    return (
        f"I'll update the existing project ({len(existing)} files) into {template.blurb} "
        f"for: {topic}. {rewritten} existing files are rewritten; files: {listing}."
    )


# --- what the prompt becomes inside the files ---


@dataclass(frozen=True, slots=True)
class _Context:
    summary: str  # the prompt on one line, without `<`, `>` or control characters
    title: str  # ASCII letters, digits and spaces only: safe in any syntax
    dist: str  # the distribution / npm name: lowercase ASCII words joined by "-"
    package: str  # a Python package name, also a safe path segment
    edit: bool

    @staticmethod
    def of(request: ModelRequest) -> _Context:
        summary = _one_line(request.prompt) or "a small project"
        words = [w for w in _WORD.findall(summary.lower()) if w not in _STOPWORDS]
        words = words[:MAX_NAME_WORDS] or ["project"]
        package = _existing_package(request) or _package_name("_".join(words))
        return _Context(
            summary=summary,
            title=" ".join(word.capitalize() for word in words),
            dist="-".join(words),
            package=package,
            edit=bool(request.files),
        )

    def substitutions(self) -> dict[str, str]:
        """Each value under a name saying the syntax it is escaped for."""
        return {
            "title": self.title,
            "dist": self.dist,
            "package": self.package,
            "md_summary": self.summary,
            "py_summary": repr(self.summary),
            "json_summary": json.dumps(self.summary, ensure_ascii=False),
            "toml_summary": _toml_string(self.summary),
            "html_summary": html.escape(self.summary),
            "changes": f"\n## Latest change\n\n- {self.summary}\n" if self.edit else "",
        }


def _one_line(prompt: str) -> str:
    # Category C (controls, format characters, lone surrogates) and the tag brackets
    # become spaces; split() then also breaks on every Unicode line separator.
    spaced = "".join(
        " " if char in "<>" or unicodedata.category(char)[0] == "C" else char for char in prompt
    )
    line = " ".join(spaced.split())
    return line if len(line) <= MAX_SUMMARY else line[: MAX_SUMMARY - 3].rstrip() + "..."


def _toml_string(text: str) -> str:
    # TOML basic string; `text` holds no control characters, so only these two need escapes.
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _package_name(name: str) -> str:
    if _is_package_name(name):
        return name
    # A leading digit, a keyword, a device name like `con`: prefixing fixes them all.
    return f"app_{name}"


def _is_package_name(name: str) -> bool:
    if not name.isidentifier() or keyword.iskeyword(name):
        return False
    try:
        check_path(f"{name}/__init__.py")
    except UnsafePath:
        return False
    return True


def _existing_package(request: ModelRequest) -> str | None:
    """The top-level package of an edited project, so its files keep their paths."""
    names = sorted(
        record.path.removesuffix("/__init__.py")
        for record in request.files
        if record.path.count("/") == 1 and record.path.endswith("/__init__.py")
    )
    return next((name for name in names if _is_package_name(name)), None)


# --- templates ---


@dataclass(frozen=True, slots=True)
class _Template:
    kind: str
    keywords: tuple[str, ...]
    blurb: str
    closing: str
    sources: tuple[tuple[str, str], ...]  # (path, content) as string.Template texts

    def files(self, context: _Context) -> list[tuple[str, str]]:
        values = context.substitutions()
        return [
            (Template(path).substitute(values), Template(text).substitute(values))
            for path, text in self.sources
        ]

    def closing_line(self, context: _Context) -> str:
        return Template(self.closing).substitute(context.substitutions()) + "\n"


def _choose_template(context: _Context, request: ModelRequest) -> _Template:
    """The template whose keyword comes first in the prompt; for an edit without one,
    the template that rewrites the most of the project's paths."""
    prompt = request.prompt.lower()
    found = [
        (position, index)
        for index, template in enumerate(TEMPLATES)
        if (position := _first_keyword(template, prompt)) is not None
    ]
    if found:
        return TEMPLATES[min(found)[1]]
    existing = {record.path for record in request.files}
    overlap, best = max((_shared_paths(t, context, existing), t.kind) for t in TEMPLATES)
    return TEMPLATES_BY_KIND[best] if overlap else DEFAULT_TEMPLATE


def _first_keyword(template: _Template, prompt: str) -> int | None:
    match = re.search(rf"\b(?:{'|'.join(template.keywords)})s?\b", prompt)
    return match.start() if match else None


def _shared_paths(template: _Template, context: _Context, existing: set[str]) -> int:
    return sum(path in existing for path, _ in template.files(context))


_README_PYTHON: Final = """\
# $title

$md_summary

## Run

```sh
$run
```

## Test

```sh
python -m pip install -e '.[test]'
python -m pytest
```
$changes"""


def _readme(run: str) -> str:
    return Template(_README_PYTHON).safe_substitute(run=run)


_PYPROJECT_HEAD: Final = """\
[build-system]
requires = ["setuptools>=68"]
build-backend = "setuptools.build_meta"

[project]
name = "$dist"
version = "0.1.0"
description = $toml_summary
requires-python = ">=3.11"

[project.optional-dependencies]
test = ["pytest>=8"]
"""


def _pyproject(packages: str, extra: str = "") -> str:
    return (
        _PYPROJECT_HEAD
        + extra
        + f'\n[tool.setuptools]\npackages = ["{packages}"]\n'
        + '\n[tool.pytest.ini_options]\npythonpath = ["."]\n'
    )


API: Final = _Template(
    kind="api",
    keywords=("api", "server", "service", "backend", "endpoint"),
    blurb="a small Python HTTP service (standard library only)",
    closing="Done: run it with `python -m app.main` and test it with `python -m pytest`.",
    sources=(
        ("pyproject.toml", _pyproject("app")),
        (
            "app/main.py",
            '''\
"""$title: a JSON HTTP service on the standard library."""

from __future__ import annotations

import json
import os
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

SERVICE = "$dist"
DESCRIPTION = $py_summary

Reply = tuple[int, dict[str, object]]


class App:
    """Routes and state, apart from sockets so tests can call them directly."""

    def __init__(self) -> None:
        self.items: list[dict[str, object]] = []

    def handle(self, method: str, path: str, body: bytes = b"") -> Reply:
        if method == "GET" and path == "/":
            return 200, {"service": SERVICE, "description": DESCRIPTION}
        if method == "GET" and path == "/health":
            return 200, {"status": "ok"}
        if method == "GET" and path == "/items":
            return 200, {"items": self.items}
        if method == "POST" and path == "/items":
            return self.create_item(body)
        return 404, {"error": "not found"}

    def create_item(self, body: bytes) -> Reply:
        try:
            data = json.loads(body or b"{}")
        except ValueError:
            return 400, {"error": "the body must be JSON"}
        name = data.get("name") if isinstance(data, dict) else None
        if not isinstance(name, str) or not name:
            return 400, {"error": "name is required"}
        item: dict[str, object] = {"id": len(self.items) + 1, "name": name}
        self.items.append(item)
        return 201, item


def make_handler(app: App) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.reply(*app.handle("GET", self.path))

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length", "0"))
            self.reply(*app.handle("POST", self.path, self.rfile.read(length)))

        def reply(self, status: int, payload: dict[str, object]) -> None:
            body = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    return Handler


def main() -> None:
    port = int(os.environ.get("PORT", "8000"))
    server = ThreadingHTTPServer(("127.0.0.1", port), make_handler(App()))
    print(f"{SERVICE} on http://127.0.0.1:{port}")
    server.serve_forever()


if __name__ == "__main__":
    main()
''',
        ),
        ("app/__init__.py", '"""$title: a small JSON HTTP service."""\n'),
        (
            "tests/test_main.py",
            """\
import json

from app.main import DESCRIPTION, App


def test_root_describes_the_service() -> None:
    assert App().handle("GET", "/") == (200, {"service": "$dist", "description": DESCRIPTION})


def test_created_item_is_listed() -> None:
    app = App()
    status, item = app.handle("POST", "/items", json.dumps({"name": "first"}).encode())
    assert status == 201
    assert app.handle("GET", "/items") == (200, {"items": [item]})


def test_item_without_name_is_refused() -> None:
    assert App().handle("POST", "/items", b"{}")[0] == 400


def test_unknown_path_is_not_found() -> None:
    assert App().handle("GET", "/nope")[0] == 404
""",
        ),
        ("README.md", _readme("python -m app.main  # PORT=8000 by default")),
    ),
)

PAGE: Final = _Template(
    kind="page",
    keywords=("page", "website", "site", "landing", "html", "homepage"),
    blurb="a static web page (HTML, CSS and a little JavaScript)",
    closing="Done: open index.html in a browser, or run `npm start` to serve it.",
    sources=(
        (
            "package.json",
            """\
{
  "name": "$dist",
  "version": "0.1.0",
  "private": true,
  "description": $json_summary,
  "scripts": {
    "start": "python3 -m http.server 8000"
  }
}
""",
        ),
        (
            "index.html",
            """\
<!doctype html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <meta name="viewport" content="width=device-width, initial-scale=1">
  <title>$title</title>
  <meta name="description" content="$html_summary">
  <link rel="stylesheet" href="style.css">
</head>
<body>
  <header class="hero">
    <h1>$title</h1>
    <p class="lead">$html_summary</p>
    <button id="cta" type="button">Get started</button>
    <p id="message" class="message" hidden></p>
  </header>
  <main class="features">
    <article><h2>Fast</h2><p>No framework and no build step.</p></article>
    <article><h2>Clear</h2><p>One page, one stylesheet, one script.</p></article>
    <article><h2>Yours</h2><p>Edit the text and make it your own.</p></article>
  </main>
  <footer>&copy; <span id="year"></span> $title</footer>
  <script src="script.js"></script>
</body>
</html>
""",
        ),
        (
            "style.css",
            """\
:root {
  --ink: #1d2433;
  --accent: #3b5bdb;
  --paper: #f8f9fb;
}

* {
  box-sizing: border-box;
}

body {
  margin: 0;
  font-family: system-ui, sans-serif;
  color: var(--ink);
  background: var(--paper);
  line-height: 1.5;
}

.hero {
  padding: 4rem 1.5rem;
  text-align: center;
}

.lead {
  max-width: 40rem;
  margin: 1rem auto 2rem;
  font-size: 1.25rem;
}

button {
  padding: 0.75rem 1.5rem;
  border: 0;
  border-radius: 0.5rem;
  color: white;
  background: var(--accent);
  font-size: 1rem;
  cursor: pointer;
}

.features {
  display: grid;
  grid-template-columns: repeat(auto-fit, minmax(14rem, 1fr));
  gap: 1.5rem;
  max-width: 60rem;
  margin: 0 auto;
  padding: 0 1.5rem 4rem;
}

footer {
  padding: 2rem;
  text-align: center;
  font-size: 0.875rem;
}
""",
        ),
        (
            "script.js",
            """\
const SUMMARY = $json_summary;

document.getElementById("year").textContent = String(new Date().getFullYear());

document.getElementById("cta").addEventListener("click", () => {
  const message = document.getElementById("message");
  message.textContent = SUMMARY;
  message.hidden = false;
});
""",
        ),
        (
            "README.md",
            """\
# $title

$md_summary

## Run

Open `index.html` in a browser, or serve the folder:

```sh
npm start
```
$changes""",
        ),
    ),
)

CLI: Final = _Template(
    kind="cli",
    keywords=("cli", "script", "tool", "command", "terminal"),
    blurb="a Python command-line tool",
    closing="Done: try `python -m $package --help`, and `python -m pytest` for the tests.",
    sources=(
        (
            "pyproject.toml",
            _pyproject("$package", '\n[project.scripts]\n$dist = "$package.cli:main"\n'),
        ),
        ("$package/__main__.py", "from $package.cli import main\n\nraise SystemExit(main())\n"),
        (
            "$package/cli.py",
            '''\
"""$title: count the lines, words and characters of text, or shout it."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

DESCRIPTION = $py_summary


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="$dist", description=DESCRIPTION)
    parser.add_argument("paths", nargs="*", help="files to read (default: standard input)")
    parser.add_argument("--upper", action="store_true", help="print the text upper-cased")
    return parser


def summarize(text: str) -> dict[str, int]:
    return {"lines": len(text.splitlines()), "words": len(text.split()), "chars": len(text)}


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        text = "".join(read(path) for path in args.paths) if args.paths else sys.stdin.read()
    except OSError as error:
        print(f"$dist: {error}", file=sys.stderr)
        return 1
    if args.upper:
        print(text.upper(), end="")
    else:
        print(" ".join(f"{key}={value}" for key, value in summarize(text).items()))
    return 0


def read(path: str) -> str:
    with open(path, encoding="utf-8") as handle:
        return handle.read()
''',
        ),
        ("$package/__init__.py", '"""$title."""\n\n__version__ = "0.1.0"\n'),
        (
            "tests/test_cli.py",
            """\
from pathlib import Path

import pytest

from $package.cli import main, summarize


def test_summarize_counts_lines_words_and_chars() -> None:
    assert summarize("one two\\nthree\\n") == {"lines": 2, "words": 3, "chars": 14}


def test_main_reads_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "in.txt"
    path.write_text("a b\\n", encoding="utf-8")
    assert main([str(path)]) == 0
    assert capsys.readouterr().out == "lines=1 words=2 chars=4\\n"


def test_missing_file_is_an_error(tmp_path: Path) -> None:
    assert main([str(tmp_path / "missing.txt")]) == 1
""",
        ),
        ("README.md", _readme("python -m $package --help")),
    ),
)

PACKAGE: Final = _Template(
    kind="package",
    keywords=("package", "library", "module"),
    blurb="a small Python package",
    closing="Done: run the tests with `python -m pytest`.",
    sources=(
        ("pyproject.toml", _pyproject("$package")),
        (
            "$package/__init__.py",
            '''\
"""$title."""

from $package.core import DESCRIPTION, Project, Task

__all__ = ["DESCRIPTION", "Project", "Task"]
__version__ = "0.1.0"
''',
        ),
        (
            "$package/core.py",
            '''\
"""$title: a project as a list of tasks, and how far along it is."""

from __future__ import annotations

from dataclasses import dataclass, field

DESCRIPTION = $py_summary


@dataclass
class Task:
    title: str
    done: bool = False


@dataclass
class Project:
    name: str
    tasks: list[Task] = field(default_factory=list)

    def add(self, title: str) -> Task:
        if not title.strip():
            raise ValueError("a task needs a title")
        task = Task(title.strip())
        self.tasks.append(task)
        return task

    def complete(self, title: str) -> None:
        for task in self.tasks:
            if task.title == title:
                task.done = True
                return
        raise KeyError(title)

    @property
    def progress(self) -> float:
        """The share of tasks done, from 0.0 to 1.0 (1.0 when there are none)."""
        if not self.tasks:
            return 1.0
        return sum(task.done for task in self.tasks) / len(self.tasks)
''',
        ),
        (
            "tests/test_core.py",
            """\
import pytest

from $package import Project


def test_progress_counts_done_tasks() -> None:
    project = Project("$dist")
    project.add("write")
    project.add("ship")
    project.complete("write")
    assert project.progress == 0.5


def test_unknown_task_cannot_be_completed() -> None:
    with pytest.raises(KeyError):
        Project("$dist").complete("nothing")


def test_blank_title_is_refused() -> None:
    with pytest.raises(ValueError):
        Project("$dist").add("  ")
""",
        ),
        ("README.md", _readme("python -c 'import $package; print($package.DESCRIPTION)'")),
    ),
)

# Earlier keyword in the prompt wins; a prompt with none gets DEFAULT_TEMPLATE.
TEMPLATES: Final = (API, PAGE, CLI, PACKAGE)
DEFAULT_TEMPLATE: Final = PACKAGE
TEMPLATES_BY_KIND: Final[Mapping[str, _Template]] = {t.kind: t for t in TEMPLATES}
