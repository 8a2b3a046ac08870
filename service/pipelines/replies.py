"""A model's JSON reply, read as untrusted: bounded while it streams, parsed strictly,
held to a JSON Schema. Any pipeline that asks its model for a structured answer (a
classification, a spec, a tool's arguments) reads it here.

Whatever is wrong with a reply fails the run as a ProviderError `bad_response`, naming
what was asked and what was wrong with it: never a half-used answer, never a 500.
"""

from __future__ import annotations

import json
import re
from typing import Any, Final, NoReturn

from jsonschema import Draft202012Validator
from jsonschema.exceptions import best_match

from service.generation.pipeline import Context
from service.generation.providers.base import ModelRequest, ProviderError

BAD_RESPONSE: Final = "bad_response"
# How much of a reply a failure quotes, for the people reading it (a schema's message
# quotes the value it refused, which may be a whole list of sections).
MAX_QUOTE: Final = 80
MAX_REASON: Final = 200
# A reply that is one Markdown code block and nothing else: chat models wrap JSON in one
# often, even when told not to, and the block's text is the reply. Prose around it is not.
FENCED: Final = re.compile(r"\A\s*```(?:json)?[ \t]*\n(.*)\n[ \t]*```\s*\Z", re.DOTALL)


async def json_reply(
    ctx: Context,
    request: ModelRequest,
    validator: Draft202012Validator,
    *,
    what: str,
    max_chars: int,
) -> dict[str, Any]:
    """The model's reply to `request`: one JSON object, at most `max_chars` characters,
    that `validator` accepts. `what` names the reply in a failure ("the intent")."""
    text = await whole_reply(ctx, request, what=what, max_chars=max_chars)
    reply = parse_object(text, what)
    error = best_match(validator.iter_errors(reply))
    if error is not None:
        where = "".join(f"[{part!r}]" for part in error.absolute_path)
        reason = error.message
        if len(reason) > MAX_REASON:  # it quotes a large value: name the rule instead
            reason = f"breaks {error.validator} {error.validator_value!r}"[:MAX_REASON]
        _bad(f"{what} the model sent does not fit its schema: {where or 'reply'}: {reason}")
    return reply


async def whole_reply(ctx: Context, request: ModelRequest, *, what: str, max_chars: int) -> str:
    """The model's whole reply; it stops reading (and closes the model's stream) at the
    first character past `max_chars`, so a runaway reply is never held whole."""
    parts: list[str] = []
    size = 0
    chunks = ctx.model(request)
    try:
        async for chunk in chunks:
            size += len(chunk.text)
            if size > max_chars:
                _bad(f"{what} the model sent is longer than {max_chars:,} characters")
            parts.append(chunk.text)
    finally:
        # Closed now, not when the collector finds it: the provider's HTTP stream with it.
        close = getattr(chunks, "aclose", None)
        if close is not None:
            await close()
    return "".join(parts)


def parse_object(text: str, what: str) -> dict[str, Any]:
    """`text` as one JSON object, strictly: nothing around it but whitespace (or one
    code block it is the whole of), no key twice (which of the two a reader takes is up
    to the reader), no NaN or Infinity (not JSON, though Python's json reads them)."""
    fenced = FENCED.match(text)
    if fenced is not None:
        text = fenced.group(1)
    try:
        value = json.loads(text, object_pairs_hook=_no_repeats, parse_constant=_no_constant)
    except (ValueError, RecursionError) as exc:
        quoted = text.strip()[:MAX_QUOTE]
        _bad(f"{what} the model sent is not JSON ({_reason(exc)}): {quoted!r}")
    if not isinstance(value, dict):
        _bad(f"{what} the model sent is {type(value).__name__}, not a JSON object")
    return value


def _no_repeats(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    found: dict[str, Any] = {}
    for key, value in pairs:
        if key in found:
            raise ValueError(f"the key {key!r} is repeated")
        found[key] = value
    return found


def _no_constant(name: str) -> NoReturn:
    raise ValueError(f"{name} is not a JSON value")


def _reason(exc: BaseException) -> str:
    if isinstance(exc, RecursionError):
        return "nested too deep"
    return str(exc)


def _bad(message: str) -> NoReturn:
    # Retryable: a model answers again differently; the same request may well succeed.
    raise ProviderError(BAD_RESPONSE, message, retryable=True)
