"""What a chat model is told: the system prompt and the messages of one request.

The system prompt asks for the output format service.generation.parser reads (a `<file path>`
block per file). `build_messages` turns a ModelRequest into chat-completions
messages: the system prompt, earlier turns, then the request with the project's
current files and its images as image content parts.

`openai.context_chars` bounds the text of the whole request: the system prompt, the
earlier turns (a quarter of what the system prompt and the request leave), the files
shown in full, the names of the others (as many as fit, then a count) and the request.
Only the request itself is never cut: a prompt longer than the budget goes alone.
Image URLs are not counted (a model counts an image by its pixels, not its URL).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Final

from openai.types.chat import (
    ChatCompletionContentPartParam,
    ChatCompletionMessageParam,
)

from service.files import FileRecord
from service.generation.providers.base import ModelRequest

SYSTEM_PROMPT: Final = """\
You are genstream, a code generator. You answer each request with a short chat reply \
and the complete files of a small, working project.

Your answer is plain text that a program reads line by line while you write it:
- Outside files, write chat text for the user: first one or two sentences on what you \
build or change, then the files, then one closing line saying how to run or test it.
- Each file is a block: a line `<file path="relative/path.ext">`, then the file's whole \
content exactly as it is to be saved, then a line `</file>`. Each tag stands alone on \
its line.
- Paths are relative, with forward slashes: never a leading `/`, never `..`, no drive \
letters, no backslashes.
- Do not wrap files in Markdown code fences: the tags are the only markup. Always write \
a file in full, never a diff or "rest unchanged".
- Write the manifest first (pyproject.toml, package.json, ...), then the entry points \
(main.py, index.html, ...), then the rest.
- When the project already has files, rewrite only the files that change, in full and \
under the same paths; files you do not write stay as they are.
- Inside a file, no line may be exactly `</file>`.

Example:
I'll write a one-file greeting script.
<file path="hello.py">
print("Hello!")
</file>
Run it with `python hello.py`.
"""

# Files a project is built around, told to the model first: where a reader starts.
MANIFESTS: Final = frozenset(
    {
        "pyproject.toml",
        "package.json",
        "requirements.txt",
        "setup.py",
        "setup.cfg",
        "Cargo.toml",
        "go.mod",
        "Gemfile",
        "composer.json",
        "Makefile",
        "README.md",
    }
)
ENTRY_POINTS: Final = frozenset(
    {
        "__main__.py",
        "main.py",
        "app.py",
        "server.py",
        "cli.py",
        "manage.py",
        "index.html",
        "index.js",
        "index.ts",
        "main.js",
        "main.ts",
        "main.go",
        "main.rs",
    }
)
# Earlier turns may use this share of the budget; the files get the rest.
HISTORY_SHARE: Final = 0.25
# When not every file can be shown, this share of the files' budget is kept for naming
# the others, so the model learns what else exists even when the shown files are big.
NAMES_SHARE: Final = 0.1
FILES_HEADER: Final = (
    "The project's current files (rewrite a file in full to change it; "
    "files you do not write stay as they are):\n"
)
REQUEST_LABEL: Final = "\nMy request:\n"
NAMES_LABEL: Final = "Also in the project, not shown: "
NAME_SEPARATOR: Final = ", "
NAMES_JOINT: Final = " and "  # between the last name and the count of the others
FILE_OPEN: Final = '<file path="{path}">\n'
FILE_CLOSE: Final = "</file>\n"
ROLES: Final = frozenset({"user", "assistant"})


@dataclass(frozen=True, slots=True)
class FileContext:
    """The files shown to the model in full, those only named (over budget), and how
    many more there are that did not fit even as a name."""

    shown: tuple[FileRecord, ...]
    named: tuple[str, ...]
    unnamed: int = 0

    @property
    def empty(self) -> bool:
        return not (self.shown or self.named or self.unnamed)


def file_rank(path: str) -> tuple[int, int, str]:
    """Sort key: manifests, then entry points, then the rest; shallow before deep."""
    name = PurePosixPath(path).name
    kind = 0 if name in MANIFESTS else 1 if name in ENTRY_POINTS else 2
    return kind, path.count("/"), path


def select_files(files: Iterable[FileRecord], budget: int) -> FileContext:
    """What of the project fits in `budget` characters of request text (the listing
    around the prompt: `request_text` adds at most that). Files go in rank order, whole:
    one too big for what is left is named, not cut, as half a file would read as the
    whole of it. Names go as far as they fit; the rest is a count."""
    ranked = sorted(files, key=lambda f: file_rank(f.path))
    room = budget - len(FILES_HEADER) - len(REQUEST_LABEL)
    if not ranked or room <= 0:
        return FileContext((), ())
    shown, rest = _fill(ranked, room)
    if rest:
        # Not all fit: show files in a smaller room, so that names have a share of their
        # own, and the count of the unnamed always fits.
        wanted = len(_names_line(tuple(f.path for f in rest), 0))
        reserve = max(_count_frame(len(ranked)), min(wanted, int(room * NAMES_SHARE)))
        shown, rest = _fill(ranked, room - reserve)
    left = room - sum(_block_cost(f) for f in shown)
    named, unnamed = _fit_names([f.path for f in rest], left)
    return FileContext(tuple(shown), named, unnamed)


def _fill(ranked: list[FileRecord], room: int) -> tuple[list[FileRecord], list[FileRecord]]:
    """The files that fit in `room`, greedily in rank order, and the others."""
    shown: list[FileRecord] = []
    rest: list[FileRecord] = []
    for file in ranked:
        cost = _block_cost(file)
        if cost <= room:
            shown.append(file)
            room -= cost
        else:
            rest.append(file)
    return shown, rest


def _fit_names(paths: list[str], room: int) -> tuple[tuple[str, ...], int]:
    """As many of `paths` as fit in `room` as names, and the count of the others; when
    not even the count fits, neither (the model is then told of no other file)."""
    named: list[str] = []
    used = _count_frame(len(paths))
    if used > room:
        return (), 0
    for path in paths:
        cost = len(path) + (len(NAME_SEPARATOR) if named else 0)
        if used + cost > room:
            break
        named.append(path)
        used += cost
    return tuple(named), len(paths) - len(named)


def _count_frame(files: int) -> int:
    """The names line without names at its longest: the count of all, after a joint."""
    return len(_names_line((), files)) + len(NAMES_JOINT)


def _block(file: FileRecord) -> str:
    return f"{FILE_OPEN.format(path=file.path)}{file.content}{_line_end(file)}{FILE_CLOSE}"


def _block_cost(file: FileRecord) -> int:
    """len(_block(file)), without copying the file's content."""
    opening = FILE_OPEN.format(path=file.path)
    return len(opening) + len(file.content) + len(_line_end(file)) + len(FILE_CLOSE)


def _line_end(file: FileRecord) -> str:
    # The closing tag must start a line of its own, as the model is asked to write it.
    return "\n" if file.content and not file.content.endswith("\n") else ""


def _names_line(named: tuple[str, ...], unnamed: int) -> str:
    more = f"{unnamed:,} more file{'s' if unnamed != 1 else ''}" if unnamed else ""
    listed = NAME_SEPARATOR.join(named)
    joint = NAMES_JOINT if listed and more else ""
    return f"{NAMES_LABEL}{listed}{joint}{more}\n"


def select_history(
    history: Sequence[tuple[str, str]], budget: int
) -> list[ChatCompletionMessageParam]:
    """The latest turns that fit in `budget` characters, oldest first."""
    kept: list[ChatCompletionMessageParam] = []
    left = budget
    for role, content in reversed(history):
        if role not in ROLES or not content:
            continue
        if len(content) > left:
            break
        left -= len(content)
        if role == "user":
            kept.append({"role": "user", "content": content})
        else:
            kept.append({"role": "assistant", "content": content})
    kept.reverse()
    return kept


def request_text(prompt: str, context: FileContext) -> str:
    if context.empty:
        return prompt
    parts = [FILES_HEADER, *map(_block, context.shown)]
    if context.named or context.unnamed:
        parts.append(_names_line(context.named, context.unnamed))
    parts += [REQUEST_LABEL, prompt]
    return "".join(parts)


def build_messages(request: ModelRequest, context_chars: int) -> list[ChatCompletionMessageParam]:
    """The messages of one chat-completions request for `request`, their text within
    `context_chars` unless the system prompt and the prompt alone exceed it."""
    system = SYSTEM_PROMPT if request.instructions is None else request.instructions
    free = max(context_chars - len(system) - len(request.prompt), 0)
    history = select_history(request.history, int(free * HISTORY_SHARE))
    used = sum(len(str(message.get("content", ""))) for message in history)
    context = select_files(request.files, free - used)
    text = request_text(request.prompt, context)
    messages: list[ChatCompletionMessageParam] = [{"role": "system", "content": system}]
    messages += history
    if not request.image_urls:
        messages.append({"role": "user", "content": text})
        return messages
    parts: list[ChatCompletionContentPartParam] = [{"type": "text", "text": text}]
    parts += [{"type": "image_url", "image_url": {"url": url}} for url in request.image_urls]
    messages.append({"role": "user", "content": parts})
    return messages
