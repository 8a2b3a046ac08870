"""The built-in provider: no network, deterministic, writes a small real project.

`render` picks a project template by keywords in the prompt and writes it in the
output format of service.generation.parser: a short chat answer, the files, a closing line.
The templates' text is package data: offline_templates/templates.toml and the sources it names.
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
import tomllib
import unicodedata
from collections.abc import AsyncGenerator, Mapping
from dataclasses import dataclass
from importlib import resources
from string import Template
from typing import Any, Final

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
        text = render(request) if request.offline_text is None else request.offline_text
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


def _template_of(entry: dict[str, Any]) -> _Template:
    """One `[[template]]` of the manifest, its sources read and their `fill` done."""
    sources = tuple(
        (
            file["path"],
            # `fill` first, leaving the prompt's names for `_Template.files`.
            Template(_TEXTS.joinpath(file["source"]).read_text(encoding="utf-8")).safe_substitute(
                file.get("fill", {})
            ),
        )
        for file in entry["file"]
    )
    template = _Template(
        kind=entry["kind"],
        keywords=tuple(entry["keywords"]),
        blurb=entry["blurb"],
        closing=entry["closing"],
        sources=sources,
    )
    _check_names(template)
    return template


def _check_names(template: _Template) -> None:
    """Refuse a template naming a value the prompt does not give: a misspelt `$tilte`
    would otherwise fail every generation that picks the template, not the start."""
    known = _Context("", "", "", "", edit=False).substitutions().keys()
    for text in (template.closing, *(part for source in template.sources for part in source)):
        parsed = Template(text)
        unknown = set(parsed.get_identifiers()) - known
        if unknown or not parsed.is_valid():
            raise ValueError(
                f"offline template {template.kind!r}: unknown names {sorted(unknown)} "
                f"or a stray $ in {text[:60]!r}"
            )


# The templates' text is package data (offline_templates/: a manifest and the sources it
# names), read once at import, so a broken file stops the start, not a generation.
_TEXTS: Final = resources.files(__name__.rpartition(".")[0]).joinpath("offline_templates")
_MANIFEST: Final = tomllib.loads(_TEXTS.joinpath("templates.toml").read_text(encoding="utf-8"))

# Earlier keyword in the prompt wins; a prompt with none gets DEFAULT_TEMPLATE.
TEMPLATES: Final = tuple(_template_of(entry) for entry in _MANIFEST["template"])
TEMPLATES_BY_KIND: Final[Mapping[str, _Template]] = {t.kind: t for t in TEMPLATES}
DEFAULT_TEMPLATE: Final = TEMPLATES_BY_KIND[_MANIFEST["default"]]
