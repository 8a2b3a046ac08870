"""What `genstream generate` shows: chat text, progress and notes, on a terminal or not.

On a terminal (`LiveDisplay`): the chat text as it arrives, a progress bar kept on the
last line, colour unless NO_COLOR is set. Anywhere else (`PlainDisplay`): whole lines
only, no bar, no colour, each line flushed so a pipe sees it at once.

Text from the model is untrusted: control characters other than newline and tab are
replaced before they reach a terminal, so model output cannot move the cursor, set
the title or write the clipboard (ESC sequences). A path is shown by `shown`, which
also makes visible what a terminal would hide or reorder.
"""

from __future__ import annotations

import os
import re
import shutil
import unicodedata
from typing import Final, Protocol, TextIO

_CONTROL: Final = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")
REPLACEMENT: Final = "\ufffd"

RESET: Final = "\x1b[0m"
STYLES: Final = {
    "dim": "\x1b[2m",
    "ok": "\x1b[32m",
    "warn": "\x1b[33m",
    "error": "\x1b[31m",
    "bar": "\x1b[36m",
}
# Move to column 0, then clear to the end of the screen.
_CLEAR_DOWN: Final = "\r\x1b[J"
_UP: Final = "\x1b[1A"
BAR_WIDTH: Final = 30
PLAIN_STEP: Final = 20


def printable(text: str) -> str:
    """`text` with every control character but LF and TAB replaced by U+FFFD."""
    return _CONTROL.sub(REPLACEMENT, text)


def shown(path: str) -> str:
    """`path` as it is when every character of it shows, else its repr(): its escapes
    make visible what a terminal would hide (U+200B) or reorder (U+202E, which makes
    `evil\u202etxt.exe` read `evilexe.txt`), and it holds no control character."""
    return path if path.isprintable() else repr(path)


def wants_colour(stream: TextIO) -> bool:
    # https://no-color.org: any non-empty NO_COLOR turns colour off.
    return stream.isatty() and not os.environ.get("NO_COLOR") and os.environ.get("TERM") != "dumb"


class Display(Protocol):
    def chat(self, text: str) -> None:
        """Some of the assistant's text, as it arrives."""

    def progress(self, label: str, percent: int) -> None:
        """The current stage and the overall percentage."""

    def note(self, line: str, style: str = "") -> None:
        """One whole line: a file written, a check, the outcome."""

    def finish(self) -> None:
        """End the chat line and remove anything live; the display is done."""


def make_display(stream: TextIO) -> Display:
    if stream.isatty():
        return LiveDisplay(stream, colour=wants_colour(stream))
    return PlainDisplay(stream)


class PlainDisplay:
    """Lines for a pipe or a file: chat text line by line, a line per progress step."""

    def __init__(self, stream: TextIO) -> None:
        self._out = stream
        self._partial = ""
        self._last_progress: tuple[str, int] | None = None

    def chat(self, text: str) -> None:
        *lines, self._partial = (self._partial + printable(text)).split("\n")
        if lines:
            self._write("".join(line + "\n" for line in lines))

    def progress(self, label: str, percent: int) -> None:
        # A line when the stage changes, and every PLAIN_STEP points within one: enough
        # to see it move in a log, without a line per event.
        last = self._last_progress
        if last is not None and last[0] == label and percent - last[1] < PLAIN_STEP:
            return
        self._last_progress = (label, percent)
        self.note(f"[{percent:3d}%] {label}")

    def note(self, line: str, style: str = "") -> None:
        self._end_chat_line()
        self._write(printable(line) + "\n")

    def finish(self) -> None:
        self._end_chat_line()

    def _end_chat_line(self) -> None:
        if self._partial:
            partial, self._partial = self._partial, ""
            self._write(partial + "\n")

    def _write(self, text: str) -> None:
        self._out.write(text)
        self._out.flush()


class LiveDisplay:
    """A terminal: finished lines scroll up; below them a live region of at most two
    lines, the chat line being typed (its tail, cut to the width so it never wraps)
    and the progress bar. Each change rewrites only that region."""

    def __init__(self, stream: TextIO, *, colour: bool) -> None:
        self._out = stream
        self._colour = colour
        self._partial = ""
        self._bar = ""
        self._drawn_partial = False  # the live region has a chat line above the bar

    def chat(self, text: str) -> None:
        *lines, self._partial = (self._partial + printable(text)).split("\n")
        self._redraw("".join(line + "\n" for line in lines))

    def progress(self, label: str, percent: int) -> None:
        percent = max(0, min(100, percent))
        width = max(10, min(BAR_WIDTH, _columns() - len(label) - 10))
        filled = round(width * percent / 100)
        bar = "█" * filled + "░" * (width - filled)
        self._bar = f"{self._paint(bar, 'bar')} {percent:3d}% {printable(label)}"
        self._redraw("")

    def note(self, line: str, style: str = "") -> None:
        # A note goes above the chat line being typed: that line is not finished.
        self._redraw(self._paint(printable(line), style) + "\n")

    def finish(self) -> None:
        partial, self._partial, self._bar = self._partial, "", ""
        self._redraw(partial + "\n" if partial else "")
        self._out.write(_CLEAR_DOWN)
        self._out.flush()

    def _redraw(self, scrolled: str) -> None:
        parts = [_UP + _CLEAR_DOWN if self._drawn_partial else _CLEAR_DOWN, scrolled]
        self._drawn_partial = bool(self._partial)
        if self._partial:
            parts.append(_tail(self._partial.replace("\t", "    "), _columns() - 1) + "\n")
        parts.append(self._bar)
        self._out.write("".join(parts))
        self._out.flush()

    def _paint(self, text: str, style: str) -> str:
        if not self._colour or style not in STYLES:
            return text
        return f"{STYLES[style]}{text}{RESET}"


def _columns() -> int:
    return shutil.get_terminal_size().columns


def _tail(text: str, columns: int) -> str:
    """The end of `text` that fits in `columns` cells (wide characters take two)."""
    used = 0
    start = len(text)
    while start > 0:
        cells = 2 if unicodedata.east_asian_width(text[start - 1]) in "WF" else 1
        if used + cells > columns:
            break
        used += cells
        start -= 1
    return text[start:]
