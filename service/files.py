"""A project's file as a value: what the storage keeps, the model reads and validation checks.

Its own module so that providers and validation use it without importing the storage.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class FileRecord:
    path: str
    content: str
    size: int  # UTF-8 bytes
    sha256: str

    @staticmethod
    def of(path: str, content: str) -> FileRecord:
        raw = content.encode()
        return FileRecord(path, content, len(raw), hashlib.sha256(raw).hexdigest())
