"""The `openai` provider: any OpenAI-compatible chat-completions server, streamed.

One generation is one `chat.completions.create(stream=True)` call through the
official `openai` package (OpenAI itself, Ollama, vLLM, llama.cpp's server), with
`stream_options.include_usage` so the last chunk carries the token counts.

Retries are ours, not the SDK's (`max_retries=0` on the client). The SDK retries only
until the response headers arrive; a stream that dies after them, before its first
token, is outside every SDK retry. One loop here covers both windows with one budget
(`openai.max_retries`) and one rule: retry a retryable failure only while no text
has been streamed, because text already journaled cannot be taken back and a retry
would repeat it.

Every failure leaves as a ProviderError with a code, a message for people, and
whether submitting again may help.

The stream is decoded as WHATWG says, not as the SDK's decoder does (`_SSEDecoder`),
one event of it is never held past a bound derived from generation.max_output_chars,
and an error object inside a 200 stream is mapped by its `code` like an HTTP status
(LiteLLM's proxy reports a rate limit that way).
"""

from __future__ import annotations

import asyncio
import email.utils
import math
import random
import ssl
import time
from collections.abc import AsyncGenerator, AsyncIterator, Iterator, Mapping
from contextlib import aclosing
from dataclasses import dataclass
from typing import Any, Final, TypeGuard

import openai
from openai._streaming import ServerSentEvent, SSEDecoder
from openai.types.chat import ChatCompletionChunk, ChatCompletionMessageParam

from service.config import OpenAISettings
from service.generation.prompts import build_messages
from service.generation.providers.base import (
    Chunk,
    ModelRequest,
    ProviderError,
    Usage,
    output_too_large,
)

# A server asking for a longer wait than this is not waited for: the generation
# fails as rate_limited (retryable), and the user decides when to submit again.
MAX_RETRY_AFTER_SECONDS: Final = 60.0
MAX_BACKOFF_SECONDS: Final = 30.0
# Share of a backoff drawn at random, so clients failing together do not retry together.
JITTER: Final = 0.25
# A server's error message shown to people is cut to this length.
MAX_DETAIL: Final = 300
# An error object inside a stream that names a rate limit without an HTTP status as its
# code: OpenAI's own code (platform.openai.com/docs/guides/error-codes), and the types
# LiteLLM and Anthropic-style servers give.
RATE_LIMIT_CODES: Final = frozenset({"rate_limit_exceeded"})
RATE_LIMIT_TYPES: Final = frozenset({"throttling_error", "rate_limit_error"})
TOO_MANY_REQUESTS: Final = 429
# One event of the stream carries one content delta, and a delta longer than
# generation.max_output_chars fails the generation anyway. A character takes at most 12
# bytes of JSON (one outside the BMP, written as two \u escapes), and the chunk's other
# fields take far less than 64 KiB: an event larger than that can only end as
# output_too_large, so it is refused before it is held whole.
JSON_BYTES_PER_CHAR: Final = 12
EVENT_ENVELOPE_BYTES: Final = 65_536


def max_event_bytes(max_output_chars: int) -> int:
    """The largest SSE event of a stream whose answer may hold `max_output_chars`."""
    return JSON_BYTES_PER_CHAR * max_output_chars + EVENT_ENVELOPE_BYTES


class _SSEDecoder(SSEDecoder):
    """The SDK's SSE decoder, dispatching only the events WHATWG dispatches, and giving
    up on an event larger than `max_event_bytes` before it holds it whole.

    WHATWG HTML 9.2.6, "dispatch the event": if the data buffer is empty, reset the
    event type and return. The SDK's decoder also dispatches when it has seen an `id:`
    or `retry:` field, and as it rightly keeps the last event id across events, every
    blank line after the first `id:` then dispatches; its stream parses that empty data
    as JSON and fails. So a `retry: 3000` block before the data, or `: ping` comments
    after `id:` lines, failed a good answer as bad_response (openai/openai-python#2722,
    #3833). A `data:` line with nothing after it is still an event, and still not JSON.

    The SDK's decoder has no size limit: it buffers a line until its end, then the
    event's lines until a blank line, then joins and parses them. One `data:` line of
    40 MB grew the peak RSS by 153 MiB before the output cap could see its text. Here the
    bytes of the event so far (its finished lines, and the line still open) are counted
    as each chunk arrives, and the stream fails as output_too_large once they pass the
    bound: a chunk (64 KiB, the HTTP layer's read) past it at most.
    """

    def __init__(self, max_output_chars: int) -> None:
        self._max_output_chars = max_output_chars
        self._max_event_bytes = max_event_bytes(max_output_chars)
        self._held = 0  # bytes of the current event's finished lines
        self._open = 0  # bytes of the line not yet ended
        super().__init__()

    def _reset(self) -> None:
        super()._reset()
        self._held = self._open = 0

    def iter_bytes(self, iterator: Iterator[bytes]) -> Iterator[ServerSentEvent]:
        return super().iter_bytes(self._measure(chunk) for chunk in iterator)

    def aiter_bytes(self, iterator: AsyncIterator[bytes]) -> AsyncIterator[ServerSentEvent]:
        return super().aiter_bytes(self._ameasure(iterator))

    async def _ameasure(self, iterator: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
        async for chunk in iterator:
            yield self._measure(chunk)

    def _measure(self, chunk: bytes) -> bytes:
        """Count a chunk before the SDK's line splitter takes it."""
        end = max(chunk.rfind(b"\n"), chunk.rfind(b"\r"))
        if end >= 0:
            # Lines end in this chunk: decode() counts them as it gets them (the SDK
            # decodes a chunk's lines before it reads the next chunk).
            self._open = len(chunk) - end - 1
        else:
            self._open += len(chunk)
            self._check(self._held + self._open)
        return chunk

    def decode(self, line: str) -> ServerSentEvent | None:
        if not line:
            self._held = 0
            if not self._data:
                self._event = None
                return None
        else:
            # Every line of the event counts, comments and other fields too: a bound on
            # what it may be, not only on what the SDK keeps of it.
            self._held += len(line.encode())
            self._check(self._held)
        return super().decode(line)

    def _check(self, size: int) -> None:
        if size > self._max_event_bytes:
            raise output_too_large(
                f"an event of the model's stream passed {self._max_event_bytes:,} bytes, more"
                f" than generation.max_output_chars ({self._max_output_chars:,}) can fill"
            )


class _AsyncOpenAI(openai.AsyncOpenAI):
    def __init__(self, *, max_output_chars: int, **options: Any) -> None:
        self._max_output_chars = max_output_chars
        super().__init__(**options)

    # `_make_sse_decoder` is where the SDK lets a client choose its stream decoder
    # (the Protocol SSEBytesDecoder); the peer-shape tests in tests/test_openai_provider.py
    # and the huge-line test in tests/test_model_bounds.py fail if a new SDK stops
    # calling it.
    def _make_sse_decoder(self) -> SSEDecoder:
        return _SSEDecoder(self._max_output_chars)


@dataclass
class _Attempt:
    """What one streamed call has produced so far."""

    opened: bool = False  # the server answered 200 and the stream began
    text_chunks: int = 0
    finished: bool = False
    usage: Usage | None = None


class OpenAIProvider:
    name = "openai"

    def __init__(self, settings: OpenAISettings, api_key: str, *, max_output_chars: int) -> None:
        if not api_key:
            raise ValueError("the openai provider needs an API key")
        self.settings = settings
        self._max_output_chars = max_output_chars
        self.model = settings.model
        self._api_key = api_key
        # Built once: loading the CA store costs 100-500 ms on this machine, which a
        # client per generation would otherwise add to every time to first token.
        self._tls = ssl.create_default_context()

    async def stream(self, request: ModelRequest) -> AsyncGenerator[Chunk, None]:
        messages = build_messages(request, self.settings.context_chars)
        # A client per generation: the Provider contract has no close(), and this one
        # closes its connections when the generation ends, however it ends. Retries
        # within the generation reuse its connection.
        async with self._client() as client:
            retries = 0
            while True:
                attempt = _Attempt()
                try:
                    # aclosing: when this generator is closed at a yield, the call's
                    # stream is closed now, before the client, not whenever GC runs.
                    async with aclosing(self._call(client, messages, attempt)) as chunks:
                        async for chunk in chunks:
                            yield chunk
                    return
                except ProviderError as error:
                    delay = self._retry_delay(error, retries, attempt)
                    if delay is None:
                        raise
                retries += 1
                await asyncio.sleep(delay)

    def _client(self) -> openai.AsyncOpenAI:
        # The read timeout bounds the silence between two chunks, not the whole answer:
        # a long generation that keeps streaming is never cut by it.
        timeout = self.settings.request_timeout_seconds
        return _AsyncOpenAI(
            max_output_chars=self._max_output_chars,
            api_key=self._api_key,
            base_url=self.settings.base_url or None,
            timeout=timeout,
            max_retries=0,
            http_client=openai.DefaultAsyncHttpxClient(verify=self._tls, timeout=timeout),
        )

    def _retry_delay(self, error: ProviderError, retries: int, attempt: _Attempt) -> float | None:
        """Seconds to wait before the next try, or None when this error is final."""
        if not error.retryable or attempt.text_chunks or retries >= self.settings.max_retries:
            return None
        asked = error.details.get("retry_after")
        if asked is not None:
            wait = float(asked)
            return wait if wait <= MAX_RETRY_AFTER_SECONDS else None
        backoff = min(self.settings.retry_backoff_seconds * 2.0**retries, MAX_BACKOFF_SECONDS)
        return backoff * (1 - JITTER * random.random())

    async def _call(
        self,
        client: openai.AsyncOpenAI,
        messages: list[ChatCompletionMessageParam],
        attempt: _Attempt,
    ) -> AsyncGenerator[Chunk, None]:
        try:
            stream = await client.chat.completions.create(
                model=self.settings.model,
                messages=messages,
                stream=True,
                stream_options={"include_usage": True},
                temperature=self.settings.temperature,
                max_tokens=self.settings.max_tokens,
            )
            attempt.opened = True
            async with stream:
                async for raw in stream:
                    text = _read(raw, attempt)
                    if text:
                        attempt.text_chunks += 1
                        yield Chunk(text=text)
        except openai.APIError as exc:
            raise _provider_error(exc, opened=attempt.opened) from exc
        except ValueError as exc:  # the SDK's json.loads of a data line that is not JSON
            raise _bad_response(f"a chunk was not JSON ({exc})") from exc
        if not attempt.finished:
            # The body ended cleanly but the model never said it was done: a proxy or
            # server that closed the stream early. Treated like a cut connection.
            raise ProviderError(
                "connection_lost",
                "the model's stream ended before the model finished; try again",
                retryable=True,
            )
        # Servers that ignore include_usage: each content delta is one token on OpenAI,
        # Ollama and llama.cpp, so the count of deltas is the best estimate there is.
        yield Chunk(usage=attempt.usage or Usage(0, attempt.text_chunks))


def _read(raw: object, attempt: _Attempt) -> str:
    """The content of one chunk, noting its finish and usage; checks the shape because
    the SDK builds chunks without validating them."""
    if not isinstance(raw, ChatCompletionChunk):
        raise _bad_response(f"a chunk was {type(raw).__name__}, not an object")
    usage = raw.usage
    if usage is not None:
        prompt = getattr(usage, "prompt_tokens", None)
        completion = getattr(usage, "completion_tokens", None)
        if not (_is_count(prompt) and _is_count(completion)):
            raise _bad_response("usage without integer token counts")
        attempt.usage = Usage(prompt, completion)
    choices: Any = raw.choices
    if not isinstance(choices, list):
        raise _bad_response("a chunk's choices were not a list")
    parts: list[str] = []
    for choice in choices:
        delta = getattr(choice, "delta", None)
        content = getattr(delta, "content", None)
        if content is not None and not isinstance(content, str):
            raise _bad_response("a chunk's content was not a string")
        if content:
            parts.append(content)
        if getattr(choice, "finish_reason", None):
            attempt.finished = True
    return "".join(parts)


def _is_count(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _bad_response(detail: str) -> ProviderError:
    return ProviderError(
        "bad_response", f"the model server sent a malformed stream: {detail}", retryable=False
    )


def _provider_error(exc: openai.APIError, *, opened: bool) -> ProviderError:
    if isinstance(exc, openai.APITimeoutError):
        return ProviderError(
            "timeout", "the model server stopped answering (request timed out)", retryable=True
        )
    if isinstance(exc, openai.APIConnectionError):
        if opened:
            return ProviderError(
                "connection_lost",
                "the connection to the model server was lost in the middle of the answer",
                retryable=True,
            )
        return ProviderError(
            "connection_failed", "could not connect to the model server", retryable=True
        )
    if isinstance(exc, openai.APIStatusError):
        status = exc.status_code
        retry_after = _retry_after(exc.response.headers)
        return _status_error(status, f"HTTP {status}", _detail(exc), retry_after)
    # An error object inside a 200 stream: the server failed after its headers, so only
    # the object's code can say how. LiteLLM's proxy gives the status it would have
    # answered, as a string ("429" for a rate limit, with no Retry-After).
    stands_for = _stream_error_status(exc)
    if stands_for is None:
        return ProviderError(
            "provider_error", f"the model server failed: {_detail(exc)}", retryable=True
        )
    return _status_error(stands_for, f"error code {exc.code} in the stream", _detail(exc), None)


def _stream_error_status(exc: openai.APIError) -> int | None:
    """The HTTP status an error object inside a stream stands for, if it says one."""
    code = exc.code  # the SDK's str() of the object's code, whatever its JSON type
    if code is not None and len(code) == 3 and code.isascii() and code.isdigit():
        status = int(code)
        return status if 400 <= status <= 599 else None
    kind: object = exc.type
    if code in RATE_LIMIT_CODES or (isinstance(kind, str) and kind in RATE_LIMIT_TYPES):
        return TOO_MANY_REQUESTS
    return None


def _status_error(status: int, where: str, detail: str, retry_after: float | None) -> ProviderError:
    """The failure an HTTP status stands for; `where` says where the status came from."""
    if status in (401, 403):
        # The server's text may echo part of the key: say what to check instead.
        return ProviderError(
            "auth_failed",
            f"the model server refused the API key ({where}); check OPENAI_API_KEY",
            retryable=False,
        )
    if status == TOO_MANY_REQUESTS:
        details = {}
        if retry_after is not None:
            details["retry_after"] = f"{retry_after:.3f}"
        return ProviderError(
            "rate_limited",
            f"the model server is rate limiting requests: {detail}",
            retryable=True,
            details=details,
        )
    if status == 404:
        return ProviderError(
            "model_not_found", f"the model server has no such model: {detail}", retryable=False
        )
    # 408 and 409 are the API's own "try again" answers (the SDK retries them too).
    if status >= 500 or status in (408, 409):
        return ProviderError(
            "provider_error", f"the model server failed ({where}): {detail}", retryable=True
        )
    return ProviderError(
        "bad_request", f"the model server refused the request ({where}): {detail}", False
    )


def _detail(exc: openai.APIError) -> str:
    body = exc.body
    message = body.get("message") if isinstance(body, Mapping) else None
    text = message if isinstance(message, str) and message else exc.message
    return text if len(text) <= MAX_DETAIL else text[: MAX_DETAIL - 3] + "..."


def _retry_after(headers: Mapping[str, str]) -> float | None:
    """Seconds the server asks to wait: `retry-after-ms` (OpenAI), then `retry-after`
    as seconds or an HTTP date (RFC 9110 10.2.3)."""
    for name, scale in (("retry-after-ms", 0.001), ("retry-after", 1.0)):
        value = headers.get(name)
        if value is None:
            continue
        try:
            seconds = float(value) * scale
        except ValueError:
            continue
        if math.isfinite(seconds) and seconds >= 0:
            return seconds
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        moment = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(moment.timestamp() - time.time(), 0.0)
