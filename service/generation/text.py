"""The model's text made valid Unicode before anything parses, checks or stores it.

JSON spells a character beyond U+FFFF as a surrogate pair (U+1F600 is "\\ud83d\\ude00"),
and a model server may cut the pair between two chunks: the openai SDK decodes each
chunk on its own, so the halves arrive as two lone surrogates. Any "\\udXXX" escape may
also be one on its own. No UTF-8 can hold a surrogate, so the journal could not store
it, and replacing it needs care:

* A high surrogate at the end of a chunk is held back and joined to the low one that
  starts the next, so the character arrives whole.
* What is still alone becomes U+FFFD, the Unicode replacement character (not `?`, which
  is ordinary text). In chat text and file content that is the whole clean-up; a path
  holding U+FFFD is refused by service/paths.py, so a path is never stored under a name
  other than the one the model sent.
* U+0000 (NUL) becomes U+FFFD too: PostgreSQL's text cannot hold it ("the character
  with code zero cannot be stored", PostgreSQL docs, 8.3 Character Types), so a model
  that sent one had its run's end refused by the database until the next start, and
  SQLite would have stored what PostgreSQL cannot: both store the same text this way.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import AsyncGenerator
from typing import Final

from service.generation.providers.base import Chunk

REPLACEMENT: Final = "\ufffd"
NUL: Final = "\x00"
_HIGH_SURROGATES: Final = range(0xD800, 0xDC00)


def valid(text: str) -> str:
    """`text` with each surrogate pair joined, each lone surrogate and each NUL made
    U+FFFD."""
    if NUL in text:
        text = text.replace(NUL, REPLACEMENT)
    if text.isascii():
        return text
    try:
        text.encode()
    except UnicodeEncodeError:
        # UTF-16 is where surrogates mean something: written out as they are, then read
        # back, a pair becomes its character and a lone one the replacement character.
        return text.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "replace")
    return text


class SurrogateJoiner:
    """Text arriving in chunks, given back valid, with a pair cut between two chunks
    joined: feed() every chunk in order, then finish()."""

    __slots__ = ("_held",)

    def __init__(self) -> None:
        self._held = ""  # a high surrogate that ended the last chunk

    def feed(self, text: str) -> str:
        if self._held:
            text, self._held = self._held + text, ""
        elif text.isascii() and NUL not in text:
            return text
        if text and ord(text[-1]) in _HIGH_SURROGATES:
            text, self._held = text[:-1], text[-1]
        return valid(text)

    def finish(self) -> str:
        """What is still held at the end of the stream: a high surrogate alone."""
        held, self._held = self._held, ""
        return valid(held)


async def whole_characters(chunks: AsyncGenerator[Chunk, None]) -> AsyncGenerator[Chunk, None]:
    """The provider's chunks with their text valid and no character cut in two."""
    joiner = SurrogateJoiner()
    # aclosing: closing this generator closes the provider's (its HTTP connection).
    async with contextlib.aclosing(chunks):
        async for chunk in chunks:
            text = joiner.feed(chunk.text) if chunk.text else chunk.text
            yield chunk if text is chunk.text else dataclasses.replace(chunk, text=text)
    rest = joiner.finish()
    if rest:
        yield Chunk(text=rest)
