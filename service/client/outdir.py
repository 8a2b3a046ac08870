"""Writing generated files under a local directory. The server checked each path, but
the CLI checks again: a path comes from a model, and the server may not be ours."""

from __future__ import annotations

import os
from pathlib import Path

from service.paths import UnsafePath, check_path

# O_NOFOLLOW: a symbolic link planted at the file's own name is refused by the kernel
# between our check and the open, not followed out of the directory.
_OPEN_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_NOFOLLOW", 0)


def write_file(root: Path, raw_path: str, content: str) -> Path:
    """Write `content` to `raw_path` under `root` (which must exist) and return where.

    UnsafePath if the path is not a safe relative path, or if any part of it under
    `root` is a symbolic link (it could lead anywhere); OSError if the disk says no.
    """
    safe = check_path(raw_path)
    base = root.resolve(strict=True)
    *folders, name = safe.split("/")
    current = base
    for folder in folders:
        current = current / folder
        if current.is_symlink():
            raise UnsafePath(f"{raw_path!r}: {folder!r} is a symbolic link")
        current.mkdir(exist_ok=True)
    target = current / name
    if target.is_symlink():
        raise UnsafePath(f"{raw_path!r} is a symbolic link")
    if not target.resolve().is_relative_to(base):  # every part was checked: a last guard
        raise UnsafePath(f"{raw_path!r} resolves outside {root}")
    try:
        fd = os.open(target, _OPEN_FLAGS, 0o644)
    except OSError as exc:
        if target.is_symlink():  # planted after the check above
            raise UnsafePath(f"{raw_path!r} is a symbolic link") from exc
        raise
    # newline="": the bytes the model wrote, with no line-end translation.
    with os.fdopen(fd, "w", encoding="utf-8", newline="") as file:
        file.write(content)
    return target
