"""The output bounds: the caps on what one generation takes from its model."""

from __future__ import annotations

from service.config import GenerationSettings
from service.generation.parser import FileDelta, FileStarted, Item
from service.generation.providers.base import ProviderError
from service.generation.providers.base import output_too_large as _too_large


class OutputBounds:
    """What one generation may take from its model: generation.max_output_chars (every
    character it sends, tags included), max_files (distinct paths) and max_file_bytes
    (one file's UTF-8 bytes). `max_tokens` is only a request to the model; a model that
    ignores it, or sends a token of megabytes, is stopped here, before its text grows
    the parser's buffers, the run's files or the message."""

    __slots__ = ("_chars", "_file_bytes", "_limits", "_paths")

    def __init__(self, limits: GenerationSettings) -> None:
        self._limits = limits
        self._chars = 0
        self._paths: set[str] = set()
        self._file_bytes = 0  # of the file being written

    def take(self, text: str) -> None:
        """Count a chunk of the model's text; raise if it crosses the output cap (the
        chunk is then not taken at all)."""
        self._chars += len(text)
        limit = self._limits.max_output_chars
        if self._chars > limit:
            raise _too_large(f"the model's answer passed generation.max_output_chars ({limit:,})")

    def admit(self, items: list[Item]) -> tuple[list[Item], ProviderError | None]:
        """The items before the first that crosses a cap, and that cap's error."""
        for index, item in enumerate(items):
            crossed = self._crosses(item)
            if crossed is not None:
                return items[:index], crossed
        return items, None

    def _crosses(self, item: Item) -> ProviderError | None:
        if isinstance(item, FileStarted):
            self._file_bytes = 0
            if item.path not in self._paths:  # a file written again is still one file
                if len(self._paths) >= self._limits.max_files:
                    limit = self._limits.max_files
                    return _too_large(f"the model wrote more than generation.max_files ({limit:,})")
                self._paths.add(item.path)
        elif isinstance(item, FileDelta):
            # surrogatepass: a count, never an error, whatever the text holds.
            self._file_bytes += len(item.text.encode("utf-8", "surrogatepass"))
            limit = self._limits.max_file_bytes
            if self._file_bytes > limit:
                return _too_large(
                    f"the file {item.path} passed generation.max_file_bytes ({limit:,} bytes)"
                )
        return None
