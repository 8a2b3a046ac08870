"""Checks run on generated files in the validating stage, with the standard library."""

from __future__ import annotations

import ast
import json
import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import PurePosixPath

from service.files import FileRecord


@dataclass(frozen=True, slots=True)
class CheckResult:
    path: str
    check: str
    ok: bool
    detail: str


def _json(content: str) -> None:
    json.loads(content)


def _toml(content: str) -> None:
    tomllib.loads(content)


def _python(content: str) -> None:
    ast.parse(content)


CHECKS: dict[str, tuple[str, Callable[[str], None]]] = {
    ".json": ("json", _json),
    ".toml": ("toml", _toml),
    ".py": ("python", _python),
}


def check_file(file: FileRecord) -> CheckResult | None:
    """Parse the file as its type when the standard library can tell; None otherwise."""
    suffix = PurePosixPath(file.path).suffix.lower()
    if suffix not in CHECKS:
        return None
    name, parse = CHECKS[suffix]
    try:
        parse(file.content)
    except SyntaxError as exc:
        return CheckResult(file.path, name, False, f"line {exc.lineno}: {exc.msg}")
    except (ValueError, tomllib.TOMLDecodeError) as exc:
        return CheckResult(file.path, name, False, str(exc))
    except (RecursionError, MemoryError):
        # Untrusted content: "[" * 100_000 exhausts the JSON and TOML parsers' stack.
        return CheckResult(file.path, name, False, f"{file.path} is nested too deeply to parse")
    return CheckResult(file.path, name, True, f"{file.path} parses as {name}")
