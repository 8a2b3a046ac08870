"""What every provider takes and gives: the contract between generation and a model."""

from __future__ import annotations

from collections.abc import AsyncGenerator
from dataclasses import dataclass, field
from typing import Final, Protocol

from service.files import FileRecord


@dataclass(frozen=True, slots=True)
class ModelRequest:
    prompt: str
    image_urls: tuple[str, ...] = ()
    # The project's files as they are before this generation (for edits).
    files: tuple[FileRecord, ...] = ()
    # Earlier turns of the chat, oldest first: (role, content).
    history: tuple[tuple[str, str], ...] = ()
    # The system prompt of a pipeline's own task; None: the code pipeline's (prompts.py).
    instructions: str | None = None
    # What the offline provider streams for this request, where a pipeline computes its
    # deterministic answer itself; None: the offline provider's code templates.
    offline_text: str | None = None


@dataclass(frozen=True, slots=True)
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0

    def plus(self, other: Usage) -> Usage:
        """The usage of two calls of one run, together."""
        return Usage(
            self.prompt_tokens + other.prompt_tokens,
            self.completion_tokens + other.completion_tokens,
        )

    def as_dict(self) -> dict[str, int]:
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.prompt_tokens + self.completion_tokens,
        }


@dataclass(frozen=True, slots=True)
class Chunk:
    """A piece of the model's text, in the output format the parser reads.

    The last chunk of a stream may carry only `usage`.
    """

    text: str = ""
    usage: Usage | None = None
    # The provider's estimate of how far along it is (0.0-1.0), when it can tell.
    progress: float | None = None


@dataclass
class ProviderError(Exception):
    """A model call that failed: `code` for programs, `message` for people."""

    code: str
    message: str
    retryable: bool = False
    details: dict[str, str] = field(default_factory=dict)

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"


# A model that sent more than a generation may take: generation.py's caps on its text and
# files, and a provider's on one event of its stream.
OUTPUT_TOO_LARGE: Final = "output_too_large"


def output_too_large(cap: str) -> ProviderError:
    """The failure of a model stopped at `cap` (which says what it passed)."""
    # Not retryable: the same request would meet the same model and the same cap.
    return ProviderError(OUTPUT_TOO_LARGE, f"{cap}; it was stopped there", retryable=False)


class Provider(Protocol):
    name: str
    model: str

    def stream(self, request: ModelRequest) -> AsyncGenerator[Chunk, None]:
        """Yield the model's text as it arrives; raise ProviderError on failure."""
        ...
