"""The stage pipeline as data: each stage with its label and its band of progress."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final


@dataclass(frozen=True, slots=True)
class Stage:
    id: str
    label: str
    start: int  # progress (0-100) when the stage begins
    end: int  # progress when it is complete

    def at(self, fraction: float) -> int:
        """Overall progress at `fraction` (0.0-1.0) of the way through this stage."""
        fraction = min(max(fraction, 0.0), 1.0)
        return self.start + int((self.end - self.start) * fraction)


PLANNING: Final = Stage("planning", "Planning", 0, 10)
GENERATING: Final = Stage("generating", "Generating code", 10, 85)
VALIDATING: Final = Stage("validating", "Validating", 85, 99)
COMPLETE: Final = Stage("complete", "Complete", 100, 100)
STAGES: Final = (PLANNING, GENERATING, VALIDATING, COMPLETE)

# Progress inside the generating stage is published in steps of this many percent:
# enough to move a progress bar smoothly without an event per token.
PROGRESS_STEP: Final = 5


def describe() -> list[dict[str, str]]:
    return [{"id": stage.id, "label": stage.label} for stage in STAGES]
