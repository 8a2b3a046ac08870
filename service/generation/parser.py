"""The model's output format, parsed incrementally into chat text and files.

    Chat text for the user.
    <file path="src/app.py">
    print("hi")
    </file>
    More chat text.

A tag is a whole line: `<file path="...">` or `</file>`, with spaces or tabs around
it, ended by LF or CRLF (or by the end of the stream). The line break that ends a
tag line is markup; every other character is chat text or file content, kept
exactly as it came: CRLF is NOT normalized, so a file's sha256 is the hash of what
the model wrote. A lone CR is an ordinary character, not a line break.

The parser holds back only the current partial line, and only while it could still
become the tag that means something there: `<file ...>` in chat text, `</file>` in a
file (the other one is plain text there). Everything else is emitted as soon as it
arrives. A line longer than MAX_TAG_LINE is never a tag.

A file whose path fails service.paths.check_path is reported as FileRejected and its
content, up to its `</file>`, is dropped: neither chat text nor a file.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from enum import Enum, auto
from typing import Final

from service.paths import UnsafePath, check_path

# A path is at most 255 characters (service.paths), so a longer line is never a tag
# worth waiting for. The bound also caps the re-checking of a held line per feed.
MAX_TAG_LINE: Final = 1024


@dataclass(frozen=True, slots=True)
class TextDelta:
    text: str


@dataclass(frozen=True, slots=True)
class FileStarted:
    path: str


@dataclass(frozen=True, slots=True)
class FileDelta:
    path: str
    text: str
    # 1-based line of the file where this delta's first character sits.
    line: int


@dataclass(frozen=True, slots=True)
class FileCompleted:
    path: str
    content: str
    size: int
    sha256: str
    # False when the stream ended before `</file>`.
    closed: bool


@dataclass(frozen=True, slots=True)
class FileRejected:
    """A file whose path failed check_path: its content is swallowed."""

    path: str
    reason: str


Item = TextDelta | FileStarted | FileDelta | FileCompleted | FileRejected


def _tag_atoms(literal: str, *inner: str) -> tuple[str, ...]:
    """The regex atoms of one tag line (its line break excluded), one per step."""
    return (r"[ \t]*", *map(re.escape, literal), *inner, r"[ \t]*", r"\r?")


def _any_prefix(atoms: tuple[str, ...]) -> str:
    """A regex matching every prefix of the atoms' concatenation (nested optionals)."""
    pattern = ""
    for atom in reversed(atoms):
        pattern = f"(?:{atom}{pattern})?"
    return pattern


_OPEN_ATOMS: Final = _tag_atoms("<file path=", '"', r'(?P<path>[^"]*)', '"', ">")
_CLOSE_ATOMS: Final = _tag_atoms("</file>")
_OPEN_TAG: Final = re.compile("".join(_OPEN_ATOMS))
_CLOSE_TAG: Final = re.compile("".join(_CLOSE_ATOMS))
_OPEN_TAG_PREFIX: Final = re.compile(_any_prefix(_OPEN_ATOMS))
_CLOSE_TAG_PREFIX: Final = re.compile(_any_prefix(_CLOSE_ATOMS))


def _tag_line(tag: re.Pattern[str], line: str) -> re.Match[str] | None:
    """Match a whole line (its LF, if any, included) against a tag."""
    body = line.removesuffix("\n")
    return tag.fullmatch(body) if len(body) <= MAX_TAG_LINE else None


def _may_become(tag_prefix: re.Pattern[str], partial: str) -> bool:
    return len(partial) <= MAX_TAG_LINE and tag_prefix.fullmatch(partial) is not None


class _Mode(Enum):
    TEXT = auto()
    FILE = auto()
    # Inside a rejected file: content goes nowhere until its `</file>`.
    SWALLOW = auto()


class _Batch:
    """The items of one feed, merging consecutive deltas of the same text or file."""

    def __init__(self) -> None:
        self.items: list[Item] = []
        self._parts: list[str] = []
        self._path: str | None = None
        self._line = 0

    def delta(self, text: str, path: str | None, line: int) -> None:
        """Add chat text (path None) or file content starting at `line`."""
        if self._parts and path != self._path:
            self._flush()
        if not self._parts:
            self._path, self._line = path, line
        self._parts.append(text)

    def add(self, item: Item) -> None:
        self._flush()
        self.items.append(item)

    def done(self) -> list[Item]:
        self._flush()
        return self.items

    def _flush(self) -> None:
        if not self._parts:
            return
        text = "".join(self._parts)
        self._parts.clear()
        if self._path is None:
            self.items.append(TextDelta(text))
        else:
            self.items.append(FileDelta(self._path, text, self._line))


class OutputParser:
    """Feed the model's text in chunks of any size; get chat text and file events back."""

    def __init__(self) -> None:
        self._mode = _Mode.TEXT
        self._path = ""
        self._content: list[str] = []
        self._line = 1  # of the current file, where its next character goes
        self._held = ""  # the current line, while it could still become a tag
        self._passing = False  # the current line is known not to be a tag
        self._text: list[str] = []
        self._finished = False

    @property
    def text(self) -> str:
        """All chat text so far."""
        if len(self._text) > 1:
            self._text[:] = ["".join(self._text)]
        return self._text[0] if self._text else ""

    def feed(self, chunk: str) -> list[Item]:
        if self._finished:
            raise RuntimeError("OutputParser.feed() after finish()")
        batch = _Batch()
        start = 0
        while start < len(chunk):
            newline = chunk.find("\n", start)
            end = len(chunk) if newline < 0 else newline + 1
            self._take(chunk[start:end], batch)
            start = end
        return batch.done()

    def finish(self) -> list[Item]:
        """End of stream: decide the held line, close an unclosed file (closed=False)."""
        if self._finished:
            return []
        self._finished = True
        batch = _Batch()
        if self._held:
            self._end_line(self._held, batch)
            self._held = ""
        if self._mode is _Mode.FILE:
            batch.add(self._completed(closed=False))
        return batch.done()

    def _take(self, piece: str, batch: _Batch) -> None:
        """Handle part of one line: all of it up to and including its LF, if it has one."""
        ends_line = piece.endswith("\n")
        if self._passing:
            self._emit(piece, batch)
        else:
            line = self._held + piece
            self._held = ""
            if ends_line:
                self._end_line(line, batch)
            elif _may_become(self._awaited_tag_prefix(), line):
                self._held = line
            else:
                self._emit(line, batch)
                self._passing = True
        if ends_line:
            self._passing = False

    def _awaited_tag_prefix(self) -> re.Pattern[str]:
        # Only one tag means anything in each mode: a closing tag in chat text is text,
        # an opening tag in a file is content. So only that one is worth waiting for.
        return _OPEN_TAG_PREFIX if self._mode is _Mode.TEXT else _CLOSE_TAG_PREFIX

    def _end_line(self, line: str, batch: _Batch) -> None:
        """A whole line (its LF included, if any) that may be a tag."""
        if self._mode is _Mode.TEXT and (opening := _tag_line(_OPEN_TAG, line)):
            self._open(opening["path"], batch)
        elif self._mode is not _Mode.TEXT and _tag_line(_CLOSE_TAG, line):
            if self._mode is _Mode.FILE:
                batch.add(self._completed(closed=True))
            self._mode = _Mode.TEXT
        else:
            self._emit(line, batch)

    def _open(self, raw_path: str, batch: _Batch) -> None:
        try:
            path = check_path(raw_path)
        except UnsafePath as error:
            batch.add(FileRejected(raw_path, str(error)))
            self._mode = _Mode.SWALLOW
            return
        self._mode, self._path, self._line = _Mode.FILE, path, 1
        self._content = []
        batch.add(FileStarted(path))

    def _emit(self, text: str, batch: _Batch) -> None:
        if not text:
            return
        if self._mode is _Mode.TEXT:
            self._text.append(text)
            batch.delta(text, None, 0)
        elif self._mode is _Mode.FILE:
            self._content.append(text)
            batch.delta(text, self._path, self._line)
            self._line += text.count("\n")

    def _completed(self, *, closed: bool) -> FileCompleted:
        content = "".join(self._content)
        self._content = []
        raw = content.encode()
        return FileCompleted(self._path, content, len(raw), hashlib.sha256(raw).hexdigest(), closed)
