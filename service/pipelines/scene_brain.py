"""What the scenes pipeline asks its model, and what the offline provider answers.

Two requests a run: the tool choice (a JSON reply, read by scene_tools.parse_reply) and
the chat answer once the edit is stored. With the openai provider the model gets the
instructions below as its system prompt; the offline provider streams `offline_text`,
a deterministic function of the prompt and the project's scenes:

* "delete|remove scene 2" deletes the second scene (by position); "the intro", "first",
  "opening" name the first, "last", "final", "outro" the last, a scene's title in the
  prompt that scene; with none named (the last, "it"), the last scene;
* "trim|shorten|cut ... to 3 seconds" trims it (to half its length when no duration is
  said; never longer than it is);
* "rename|retitle ... to NEW TITLE" and "describe ... as TEXT" edit it, as does "set|make
  ... N seconds" its duration;
* anything else (or any of these with no scenes yet) adds a scene described by the prompt.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any, Final

import orjson

from service.generation.providers.base import ModelRequest
from service.pipelines.scene_tools import (
    ADD,
    DELETE,
    EDIT,
    MAX_DESCRIPTION_CHARS,
    MAX_DURATION_MS,
    MAX_TITLE_CHARS,
    TRIM,
)
from service.storage.interface import SceneRow

DECIDE_INSTRUCTIONS: Final = f"""\
You are the editor of a short video made of scenes. The user asks for one change; you
choose one tool and answer with one JSON object and nothing else:
{{"tool": "add" | "edit" | "delete" | "trim", "arguments": {{...}}}}
- add: {{"title": str, "description": str, "duration_ms": int}} appends a scene
- edit: {{"scene_id": str, and any of "title", "description", "duration_ms"}}
- trim: {{"scene_id": str, "duration_ms": int}}, shorter than the scene is
- delete: {{"scene_id": str}}
A scene_id is one of the ids listed. Titles are one line of at most {MAX_TITLE_CHARS}
characters, descriptions at most {MAX_DESCRIPTION_CHARS}, durations 1 to {MAX_DURATION_MS}
milliseconds."""

ANSWER_INSTRUCTIONS: Final = """\
You are the assistant of a video editor. An edit was just made to the user's video, as
described below. Tell the user in one or two short sentences what was done. Plain text:
no JSON, no Markdown."""

# The scenes the model is shown, at most; a description cut to this many characters.
MAX_LISTED: Final = 100
LISTED_DESCRIPTION_CHARS: Final = 200
DEFAULT_DURATION_MS: Final = 5_000
UNTITLED: Final = "Untitled scene"
MIN_NAMING_TITLE: Final = 3

_DURATION: Final = re.compile(
    r"\b(\d{1,9}(?:\.\d{1,3})?)\s*(ms|milliseconds?|s|secs?|seconds?|m|mins?|minutes?)\b",
    re.IGNORECASE,
)
_NUMBERED: Final = re.compile(r"\bscene\s+(?:number\s+)?#?(\d{1,6})\b", re.IGNORECASE)
_FIRST: Final = re.compile(r"\b(first|intro|introduction|opening)\b", re.IGNORECASE)
_DELETE: Final = re.compile(r"\b(delete|remove|drop)\b", re.IGNORECASE)
_TRIM: Final = re.compile(r"\b(trim|shorten|cut)\b", re.IGNORECASE)
_RENAME: Final = re.compile(r"\b(?:rename|retitle)\b.*?\bto\b\s*(.+)", re.IGNORECASE | re.DOTALL)
_DESCRIBE: Final = re.compile(r"\bdescribe\b.*?\bas\b\s*(.+)", re.IGNORECASE | re.DOTALL)
_RESIZE: Final = re.compile(r"\b(set|make|lengthen|extend)\b", re.IGNORECASE)
# What an add's prompt starts with that is not the scene: "add a scene of", "new shot:".
_ADD_LEAD: Final = re.compile(
    r"^\s*(?:please\s+)?(?:add|create|insert|make|new)?\s*(?:a|an|the|one)?\s*"
    r"(?:new\s+)?(?:scene|shot|clip)?\s*(?:of|with|showing|about|where|:)?\s*",
    re.IGNORECASE,
)
_CONTROL: Final = re.compile(r"[\x00-\x1f\x7f]+")
# Around a title said in a prompt: quotes, and the sentence's punctuation.
_AROUND_TITLE: Final = "\"'\u201c\u201d\u2018\u2019` .,;:!"


def decide_request(prompt: str, scenes: Sequence[SceneRow]) -> ModelRequest:
    """The tool-choice request: the scenes as they are, then the user's words."""
    listed = [
        {
            "scene_id": scene.id,
            "number": number,
            "title": scene.title,
            "description": scene.description[:LISTED_DESCRIPTION_CHARS],
            "duration_ms": scene.duration_ms,
        }
        for number, scene in enumerate(scenes[:MAX_LISTED], 1)
    ]
    more = len(scenes) - len(listed)
    listing = orjson.dumps(listed).decode()
    tail = f" (and {more} more, not shown)" if more > 0 else ""
    text = f"The video's scenes, in order{tail}:\n{listing}\n\nThe user asks:\n{prompt}"
    return ModelRequest(
        prompt=text,
        instructions=DECIDE_INSTRUCTIONS,
        offline_text=orjson.dumps(offline_choice(prompt, scenes)).decode(),
    )


def answer_request(prompt: str, done: str) -> ModelRequest:
    """The chat answer's request; offline, the answer is `done` itself."""
    text = f"The user asked:\n{prompt}\n\nWhat was done:\n{done}"
    return ModelRequest(prompt=text, instructions=ANSWER_INSTRUCTIONS, offline_text=done)


def offline_choice(prompt: str, scenes: Sequence[SceneRow]) -> dict[str, Any]:
    """The offline provider's tool choice for `prompt` on `scenes` (the module's rules)."""
    if scenes:
        scene = _named(prompt, scenes)
        duration = _duration(prompt)
        if _DELETE.search(prompt):
            return _choice(DELETE, scene_id=scene.id)
        if _TRIM.search(prompt):
            to = scene.duration_ms // 2 if duration is None else duration
            return _choice(TRIM, scene_id=scene.id, duration_ms=max(min(to, scene.duration_ms), 1))
        renamed = _RENAME.search(prompt)
        if renamed and (title := _title(renamed.group(1))):
            return _choice(EDIT, scene_id=scene.id, title=title)
        described = _DESCRIBE.search(prompt)
        if described and (description := _text(described.group(1), MAX_DESCRIPTION_CHARS)):
            return _choice(EDIT, scene_id=scene.id, description=description)
        if duration is not None and _RESIZE.search(prompt):
            return _choice(EDIT, scene_id=scene.id, duration_ms=duration)
    described_scene = _DURATION.sub(" ", _ADD_LEAD.sub("", prompt, count=1))
    return _choice(
        ADD,
        title=_title(described_scene) or UNTITLED,
        description=_text(prompt, MAX_DESCRIPTION_CHARS),
        duration_ms=_duration(prompt) or DEFAULT_DURATION_MS,
    )


def done_sentence(tool: str, scene: SceneRow, after: Sequence[SceneRow]) -> str:
    """What was done, in words: the offline answer, and what the model is told."""
    total = _seconds(sum(s.duration_ms for s in after))
    count = f"{len(after)} scene{'s' if len(after) != 1 else ''}"
    if tool == DELETE:
        return f'Deleted the scene "{scene.title}". The video has {count} left, {total} s in all.'
    number = next((n for n, s in enumerate(after, 1) if s.id == scene.id), len(after))
    named = f'scene {number}, "{scene.title}"'
    length = f"{_seconds(scene.duration_ms)} s"
    if tool == ADD:
        return f"Added {named} ({length}). The video now has {count}, {total} s in all."
    if tool == TRIM:
        return f"Trimmed {named} to {length}. The video is now {total} s long."
    return f"Updated {named} ({length}). The video has {count}, {total} s in all."


def _choice(tool: str, **arguments: Any) -> dict[str, Any]:
    return {"tool": tool, "arguments": arguments}


def _named(prompt: str, scenes: Sequence[SceneRow]) -> SceneRow:
    numbered = _NUMBERED.search(prompt)
    if numbered and 1 <= int(numbered.group(1)) <= len(scenes):
        return scenes[int(numbered.group(1)) - 1]
    lowered = prompt.lower()
    for scene in scenes:
        # Not a title of a letter or two, which most prompts would hold.
        if len(scene.title) >= MIN_NAMING_TITLE and scene.title.lower() in lowered:
            return scene
    if _FIRST.search(prompt):
        return scenes[0]
    return scenes[-1]  # "the last", or "it": the newest scene


def _duration(prompt: str) -> int | None:
    found = _DURATION.search(prompt)
    if found is None:
        return None
    unit = found.group(2).lower()
    per = 1 if unit == "ms" or unit.startswith("milli") else 60_000 if unit[0] == "m" else 1000
    return max(min(round(float(found.group(1)) * per), MAX_DURATION_MS), 1)


def _title(text: str) -> str:
    """The first line of `text` as a title: quotes and outer spaces off, cut at a word."""
    line = _text(text.strip().split("\n", 1)[0], MAX_TITLE_CHARS + 1).strip(_AROUND_TITLE)
    if len(line) > MAX_TITLE_CHARS:
        line = line[:MAX_TITLE_CHARS].rsplit(" ", 1)[0]
    return line[:1].upper() + line[1:]


def _text(text: str, limit: int) -> str:
    return " ".join(_CONTROL.sub(" ", text).split())[:limit]


def _seconds(ms: int) -> str:
    return f"{ms / 1000:g}"
