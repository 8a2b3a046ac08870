"""File paths written by the model: untrusted, so checked before anything is stored.

`check_path` accepts a relative POSIX path and returns it normalized, or raises
`UnsafePath` saying why. It never turns a bad path into another name; the one
rewrite is dropping a leading `./` (any number of them), which names the same file.
"""

from __future__ import annotations

import re
from typing import Final

MAX_PATH_LENGTH: Final = 255
MAX_SEGMENT_LENGTH: Final = 100

# `C:x` is relative to the current directory of drive C, `C:\x` absolute: either
# escapes the project on Windows.
_DRIVE: Final = re.compile(r"[A-Za-z]:")
_DOT_SLASH: Final = re.compile(r"(?:\./)+")
# Unicode category Cc: C0 (NUL included), DEL and C1. None belongs in a file name.
_CONTROL: Final = re.compile(r"[\x00-\x1f\x7f-\x9f]")
# Microsoft "Naming Files, Paths, and Namespaces": these names open a device whatever
# their extension (`con.txt` too), in any case.
_RESERVED: Final = frozenset(
    ["CON", "PRN", "AUX", "NUL"]
    + [f"{device}{n}" for device in ("COM", "LPT") for n in "123456789"]
)


class UnsafePath(ValueError):
    """A path a file must not be written to; the message says why."""


def check_path(raw: str) -> str:
    """Return `raw` as a safe relative POSIX path, or raise UnsafePath."""
    if not raw:
        raise UnsafePath("empty path")
    _check_characters(raw)
    if raw.startswith("/"):
        raise UnsafePath("absolute path")
    path = _drop_dot_slash(raw)
    if not path:
        raise UnsafePath("empty path")
    if _DRIVE.match(path):
        raise UnsafePath("drive letter in path")
    if len(path) > MAX_PATH_LENGTH:
        raise UnsafePath(f"path longer than {MAX_PATH_LENGTH} characters")
    for segment in path.split("/"):
        _check_segment(segment)
    return path


def _check_characters(raw: str) -> None:
    if "\\" in raw:
        raise UnsafePath("backslash in path")
    control = _CONTROL.search(raw)
    if control:
        raise UnsafePath(f"control character U+{ord(control.group()):04X} in path")


def _drop_dot_slash(raw: str) -> str:
    prefix = _DOT_SLASH.match(raw)
    return raw[prefix.end() :] if prefix else raw


def _check_segment(segment: str) -> None:
    if not segment:
        raise UnsafePath("empty segment in path")
    if segment in (".", ".."):
        raise UnsafePath(f"{segment!r} segment in path")
    if len(segment) > MAX_SEGMENT_LENGTH:
        raise UnsafePath(f"path segment longer than {MAX_SEGMENT_LENGTH} characters")
    if segment != segment.strip():
        raise UnsafePath(f"leading or trailing whitespace in segment {segment!r}")
    if segment.split(".", 1)[0].upper() in _RESERVED:
        raise UnsafePath(f"reserved device name {segment!r}")
