"""Open streams, counted per key (`project:{pid}`, `generation:{gid}`), with their limits."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from aiohttp import hdrs

from service.web.errors import ApiError

RETRY_AFTER_SECONDS = 5


@dataclass
class Connections:
    max_total: int
    max_per_project: int
    by_key: Counter[str] = field(default_factory=Counter)
    by_project: Counter[str] = field(default_factory=Counter)
    total: int = 0

    def open(self, key: str, project_id: str) -> None:
        """Count a new stream, or refuse it with a 503 when a limit is reached."""
        if self.total >= self.max_total:
            raise _busy(f"the server has {self.max_total} open streams, its limit")
        if self.by_project[project_id] >= self.max_per_project:
            raise _busy(f"project {project_id} has {self.max_per_project} open streams, its limit")
        self.by_key[key] += 1
        self.by_project[project_id] += 1
        self.total += 1

    def close(self, key: str, project_id: str) -> None:
        self.total -= 1
        self.by_key[key] -= 1
        if self.by_key[key] <= 0:
            del self.by_key[key]
        self.by_project[project_id] -= 1
        if self.by_project[project_id] <= 0:
            del self.by_project[project_id]

    def snapshot(self) -> dict[str, object]:
        return {"total": self.total, "by_key": dict(sorted(self.by_key.items()))}


def _busy(message: str) -> ApiError:
    return ApiError(
        503, "too_many_streams", message, headers={hdrs.RETRY_AFTER: str(RETRY_AFTER_SECONDS)}
    )
