"""What a chat model is told: the system prompt and the messages of one request.

The system prompt asks for the output format service.parser reads (a `<file path>`
block per file). `build_messages` turns a ModelRequest into chat-completions
messages: the system prompt, earlier turns, then the request with the project's
current files (within a character budget) and its images as image content parts.
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

from service.providers.base import ModelRequest
from service.storage import FileRecord

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
ROLES: Final = frozenset({"user", "assistant"})


@dataclass(frozen=True, slots=True)
class FileContext:
    """The files shown to the model in full, and those only named (over budget)."""

    shown: tuple[FileRecord, ...]
    named: tuple[str, ...]


def file_rank(path: str) -> tuple[int, int, str]:
    """Sort key: manifests, then entry points, then the rest; shallow before deep."""
    name = PurePosixPath(path).name
    kind = 0 if name in MANIFESTS else 1 if name in ENTRY_POINTS else 2
    return kind, path.count("/"), path


def select_files(files: Iterable[FileRecord], budget: int) -> FileContext:
    """The files that fit in `budget` characters, in rank order; a file too big for
    what is left is named, not cut: half a file would read as the whole of it."""
    shown: list[FileRecord] = []
    named: list[str] = []
    left = budget
    for file in sorted(files, key=lambda f: file_rank(f.path)):
        cost = len(file.content) + len(file.path)
        if cost <= left:
            shown.append(file)
            left -= cost
        else:
            named.append(file.path)
    return FileContext(tuple(shown), tuple(named))


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
    if not context.shown and not context.named:
        return prompt
    parts = [
        "The project's current files (rewrite a file in full to change it; "
        "files you do not write stay as they are):\n"
    ]
    for file in context.shown:
        # The closing tag must start a line of its own, as the model is asked to write it.
        content = file.content
        if content and not content.endswith("\n"):
            content += "\n"
        parts.append(f'<file path="{file.path}">\n{content}</file>\n')
    if context.named:
        parts.append(f"Also in the project, not shown: {', '.join(context.named)}\n")
    parts.append(f"\nMy request:\n{prompt}")
    return "".join(parts)


def build_messages(request: ModelRequest, context_chars: int) -> list[ChatCompletionMessageParam]:
    """The messages of one chat-completions request for `request`."""
    history_budget = int(context_chars * HISTORY_SHARE)
    history = select_history(request.history, history_budget)
    used = sum(len(str(message.get("content", ""))) for message in history)
    context = select_files(request.files, context_chars - used)
    text = request_text(request.prompt, context)
    messages: list[ChatCompletionMessageParam] = [{"role": "system", "content": SYSTEM_PROMPT}]
    messages += history
    if not request.image_urls:
        messages.append({"role": "user", "content": text})
        return messages
    parts: list[ChatCompletionContentPartParam] = [{"type": "text", "text": text}]
    parts += [{"type": "image_url", "image_url": {"url": url}} for url in request.image_urls]
    messages.append({"role": "user", "content": parts})
    return messages
