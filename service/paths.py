"""File paths written by the model: untrusted, so checked before anything is stored.

`check_path` accepts a relative POSIX path and returns it normalized, or raises
`UnsafePath` saying why. It never turns a bad path into another name; the one
rewrite is dropping a leading `./` (any number of them), which names the same file.

The server checks every path the model names (service/generation/parser.py), and `genstream
generate --out` checks again before it writes (service/client/outdir.py): one check, here.
Besides what could escape the directory, it refuses what would mislead a person
reading the name (bidi controls, invisible characters, line separators) and the
`.git` directory, whose hooks git runs.
"""

from __future__ import annotations

import re
import unicodedata
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
# Names git takes for its own directory, compared case-folded after NTFS drops trailing
# dots and spaces; `git~1` is its 8.3 short name (git's verify_path, CVE-2014-9390).
# A `.git/hooks/pre-commit` written by `genstream generate --out .` runs as code.
_GIT_DIRECTORY: Final = frozenset([".git", "git~1"])
# Unicode's bidirectional formatting characters (UAX #9): embeddings and overrides,
# isolates, the implicit marks. They reorder how a name displays: with U+202E,
# `evil\u202etxt.exe` shows as `evilexe.txt` (Trojan Source, CVE-2021-42574).
_BIDI_CONTROLS: Final = frozenset(
    "\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069"
)
# The character a decoder puts where text was not valid Unicode: the model's text held
# a lone surrogate here (service/generation/text.py), so this is not the name it sent.
_REPLACEMENT: Final = "\ufffd"


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
    if not raw.isascii():
        for char in raw:
            _check_character(char)


def _check_character(char: str) -> None:
    """Refuse a character that is not what it shows, or shows nothing (C0, C1 and DEL,
    category Cc, are refused above)."""
    category = unicodedata.category(char)
    code = f"U+{ord(char):04X}"
    if char in _BIDI_CONTROLS:
        raise UnsafePath(f"bidirectional control {code} in path: it reorders how the name reads")
    if category == "Cf":  # zero-width characters, the BOM, the soft hyphen, tags...
        name = unicodedata.name(char, "unnamed")
        raise UnsafePath(f"format character {code} ({name}) in path")
    if category in ("Zl", "Zp"):
        raise UnsafePath(f"{unicodedata.name(char).lower()} {code} in path")
    if category == "Cs":
        raise UnsafePath(f"lone surrogate {code} in path: not valid Unicode")
    if char == _REPLACEMENT:
        raise UnsafePath(f"replacement character {code} in path: the text was not valid Unicode")


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
    if segment.rstrip(". ").casefold() in _GIT_DIRECTORY:
        raise UnsafePath(f"{segment!r} names the .git directory: git would run hooks from it")
