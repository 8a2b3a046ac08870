"""One running generation's state: what it has said so far, and its timings."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from service.eventlog.event import Draft
from service.eventlog.journal import Check
from service.generation.pipeline import Stage
from service.generation.providers.base import Usage
from service.storage.interface import GenerationRow


@dataclass
class Run:
    """What one running generation has produced so far."""

    generation_id: str
    project_id: str
    assistant_message_id: str
    # The chat text said so far (message.delta), in order.
    said: list[str] = field(default_factory=list)
    stage_started: float = field(default_factory=time.perf_counter)
    stage_ms: dict[str, int] = field(default_factory=dict)
    started: float = field(default_factory=time.perf_counter)
    first_token_ms: int | None = None
    # Seconds the model's streams ran, over every call of the run.
    model_seconds: float = 0.0
    usage: Usage = field(default_factory=Usage)
    progress: int = 0
    # The chat text a previous process streamed (read back from the event log at
    # recovery); None while this process runs the pipeline itself.
    recovered_text: str | None = None
    # Checked in the transaction of each of its writes, where several processes share
    # the database (generation/leases.py): this process still holds its lease, or, for
    # another process's end of it, nobody does. None on one process.
    guard: Check | None = None

    @classmethod
    def of(cls, generation: GenerationRow) -> Run:
        """A run of this generation row, with nothing produced yet."""
        return cls(generation.id, generation.project_id, generation.assistant_message_id)

    @property
    def text(self) -> str:
        if self.recovered_text is not None:
            return self.recovered_text
        return "".join(self.said).strip()

    def draft(self, type_: str, **payload: Any) -> Draft:
        return Draft(self.project_id, self.generation_id, type_, payload)

    def end_stage(self, stage: Stage) -> None:
        now = time.perf_counter()
        self.stage_ms[stage.id] = round((now - self.stage_started) * 1000)
        self.stage_started = now

    def timings(self) -> dict[str, Any]:
        total = time.perf_counter() - self.started
        tokens = self.usage.completion_tokens
        seconds = self.model_seconds
        return {
            "total_ms": round(total * 1000),
            "first_token_ms": self.first_token_ms,
            "tokens_per_second": round(tokens / seconds, 1) if seconds > 0 else None,
            "stages": dict(self.stage_ms),
        }
