"""The scenes pipeline's tools (add, edit, delete, trim) and the strict reading of the
model's choice of one.

The choice is the model's text, untrusted (with the openai provider it comes off the
network): it must be one JSON object `{"tool": ..., "arguments": {...}}` and nothing
else (parsed as replies.py does for every pipeline: at most one code block around it,
no repeated key, no NaN), the arguments exactly as the tool's schema says, every string
and number bounded, and a scene it names one of this project's. Anything else is a ProviderError
`bad_response` that fails the run before anything is written. The offline provider's
choice (scene_brain.py) is read the same way: one path.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from jsonschema import Draft202012Validator
from jsonschema.exceptions import ValidationError, best_match

from service.eventlog.schemas import exact
from service.generation.providers.base import ProviderError
from service.pipelines.replies import BAD_RESPONSE, parse_object
from service.storage.interface import SceneRow

Schema = dict[str, Any]

ADD: Final = "add"
EDIT: Final = "edit"
DELETE: Final = "delete"
TRIM: Final = "trim"
TOOLS: Final = (ADD, EDIT, DELETE, TRIM)

MAX_TITLE_CHARS: Final = 120
MAX_DESCRIPTION_CHARS: Final = 2_000
# A scene of a short video, not a film: ten minutes at most.
MAX_DURATION_MS: Final = 600_000
# The whole reply: a tool choice is a few hundred characters; a model that goes on past
# this is not answering in the format, and is stopped rather than read to the end.
MAX_REPLY_CHARS: Final = 16_384
# Said back in an error: enough to name a field, never a model's megabyte of text.
MAX_DETAIL_CHARS: Final = 160
# What the failures call the reply.
WHAT: Final = "the tool choice"

# Ids as service.generation.lifecycle.new_id makes them ("scn_" and 20 hex digits); the
# bound keeps a model's id short enough to say back in an error. Whether the scene is
# the project's is the lookup's to say (`target`), not the pattern's.
SCENE_ID: Final[Schema] = {"type": "string", "pattern": "^scn_[A-Za-z0-9]{1,40}$"}
# One line with something visible in it: a title is shown in lists. Said as "not a
# control character anywhere" rather than an anchored pattern: Python's `$` (which
# jsonschema's pattern uses) also matches before a final newline.
TITLE: Final[Schema] = {
    "type": "string",
    "minLength": 1,
    "maxLength": MAX_TITLE_CHARS,
    "pattern": r"\S",
    "not": {"pattern": r"[\x00-\x1f\x7f\ud800-\udfff]"},
}
# Text with lines and tabs, no other control character; and in both, no lone surrogate
# (JSON's \ud800 escape reads as one, which no UTF-8 column or encoder takes).
DESCRIPTION: Final[Schema] = {
    "type": "string",
    "maxLength": MAX_DESCRIPTION_CHARS,
    "not": {"pattern": r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\ud800-\udfff]"},
}
DURATION: Final[Schema] = {"type": "integer", "minimum": 1, "maximum": MAX_DURATION_MS}


ARGUMENTS: Final[Mapping[str, Schema]] = {
    ADD: exact({"title": TITLE, "duration_ms": DURATION}, description=DESCRIPTION),
    # The scene and at least one thing to change in it.
    EDIT: {
        **exact({"scene_id": SCENE_ID}, title=TITLE, description=DESCRIPTION, duration_ms=DURATION),
        "minProperties": 2,
    },
    DELETE: exact({"scene_id": SCENE_ID}),
    TRIM: exact({"scene_id": SCENE_ID, "duration_ms": DURATION}),
}
_CHOICE: Final = exact({"tool": {"enum": list(TOOLS)}, "arguments": {"type": "object"}})
# The scene.tool event's payload: the choice, each tool's arguments as exact as above.
CHOICE_EVENT: Final[Schema] = {
    **_CHOICE,
    "allOf": [
        {
            "if": {"properties": {"tool": {"const": tool}}},
            "then": {"properties": {"arguments": ARGUMENTS[tool]}},
        }
        for tool in TOOLS
    ],
}
_CHOICE_CHECK: Final = Draft202012Validator(_CHOICE)
_ARGUMENT_CHECKS: Final = {tool: Draft202012Validator(ARGUMENTS[tool]) for tool in TOOLS}


@dataclass(frozen=True, slots=True)
class ToolCall:
    """A tool the model chose, its arguments checked (and titles stripped)."""

    tool: str
    arguments: Mapping[str, Any]

    @property
    def scene_id(self) -> str | None:
        value = self.arguments.get("scene_id")
        return value if isinstance(value, str) else None


def refused(detail: str) -> ProviderError:
    """The failure of a model whose tool choice cannot be used. Retryable, as replies.py
    has it: a model asked again answers differently."""
    return ProviderError(BAD_RESPONSE, f"{WHAT} the model sent was refused: {detail}", True)


def parse_reply(text: str, scenes: Sequence[SceneRow], project_id: str) -> ToolCall:
    """The model's reply as a ToolCall on `scenes` (the project's, as they are now)."""
    if len(text) > MAX_REPLY_CHARS:
        raise refused(f"it is longer than {MAX_REPLY_CHARS:,} characters")
    value = parse_object(text, WHAT)
    _check(_CHOICE_CHECK, value, "")
    tool: str = value["tool"]
    arguments: dict[str, Any] = value["arguments"]
    _check(_ARGUMENT_CHECKS[tool], arguments, "arguments")
    call = ToolCall(tool, _normalised(arguments))
    if call.scene_id is not None:
        by_id = {scene.id: scene for scene in scenes}
        target(call, by_id.get(call.scene_id), project_id)
    return call


def target(call: ToolCall, scene: SceneRow | None, project_id: str) -> SceneRow:
    """The scene `call` names, as read (`scene`; None: no such scene): refused unless it
    is this project's, and a trim unless it shortens it."""
    if scene is None or scene.project_id != project_id:
        # One answer for both: another project's id is not this project's business.
        raise refused(f"arguments.scene_id: this project has no scene {call.scene_id}")
    duration = call.arguments.get("duration_ms")
    if call.tool == TRIM and isinstance(duration, int) and duration > scene.duration_ms:
        raise refused(
            f"arguments.duration_ms: a trim shortens a scene, and {call.scene_id} "
            f"is {scene.duration_ms} ms long"
        )
    return scene


def _normalised(arguments: Mapping[str, Any]) -> dict[str, Any]:
    """As stored: a title without its outer spaces; a duration an int (JSON Schema's
    integer takes 3000.0)."""
    normal = dict(arguments)
    if "title" in normal:
        normal["title"] = normal["title"].strip()
    if "duration_ms" in normal:
        normal["duration_ms"] = int(normal["duration_ms"])
    return normal


def _check(validator: Draft202012Validator, value: Any, where: str) -> None:
    error = best_match(validator.iter_errors(value))
    if error is not None:
        path = ".".join([*([where] if where else []), *map(str, error.absolute_path)])
        raise refused(f"{path or 'the reply'}: {_reason(error)}")


def _reason(error: ValidationError) -> str:
    """What is wrong, in words of the schema, not the model's: jsonschema's own message
    quotes the value, which may be a megabyte of model text."""
    expected = error.validator_value
    reasons = {
        "type": f"is not of type {expected}",
        "enum": f"is not one of {expected}",
        "maxLength": f"is longer than {expected} characters",
        "minLength": "is empty",
        "maximum": f"is more than {expected}",
        "minimum": f"is less than {expected}",
        "pattern": "has nothing visible in it",
        "not": "holds control characters or lone surrogates",
        "minProperties": "names nothing to change",
    }
    reason = reasons.get(str(error.validator))
    if reason is not None:
        return reason
    return error.message[:MAX_DETAIL_CHARS]
