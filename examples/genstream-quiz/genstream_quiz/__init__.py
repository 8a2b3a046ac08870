"""A multiple-choice quiz on the prompt's topic: a genstream pipeline from a package of its own.

genstream finds it through this package's entry point (pyproject.toml, group
`genstream.pipelines`) and runs it with every guarantee its built-ins have. It uses only
the public API of `service.pipelines`: it declares its stages, its two event types with
their JSON Schemas and its inputs, and its run streams a question at a time.

The model answers one JSON object a line (`instructions`); each line is untrusted: it
becomes a question only if it parses and fits the bounds below, else it is skipped and
counted. The offline provider streams `offline_answer`, a quiz about the topic's own
words, so a test knows every question and answer in advance.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any, Final

from service.pipelines import Context, EventSpec, ModelRequest, Outcome, Pipeline, Stage

__all__ = ["PIPELINE", "offline_answer", "parse_question", "run"]

TOPIC: Final = Stage("topic", "Reading the topic", 0, 10)
QUESTIONS: Final = Stage("questions", "Writing the questions", 10, 90)
COMPLETE: Final = Stage("complete", "Complete", 100, 100)

DEFAULT_QUESTIONS: Final = 3
MAX_QUESTIONS: Final = 10
MAX_TOPIC_CHARS: Final = 200
MAX_QUESTION_CHARS: Final = 300
MAX_CHOICE_CHARS: Final = 120
MIN_CHOICES: Final = 2
MAX_CHOICES: Final = 6
# A line longer than this is no question of ours: dropped as it grows, not buffered.
MAX_LINE_CHARS: Final = 4000

INPUTS: Final[Mapping[str, Any]] = {
    "type": "object",
    "properties": {
        "questions": {
            "type": "integer",
            "minimum": 1,
            "maximum": MAX_QUESTIONS,
            "default": DEFAULT_QUESTIONS,
            "description": "how many questions to write",
        }
    },
    "additionalProperties": False,
}
TOPIC_EVENT: Final[Mapping[str, Any]] = {
    "type": "object",
    "required": ["topic", "questions"],
    "properties": {
        "topic": {"type": "string", "minLength": 1, "maxLength": MAX_TOPIC_CHARS},
        "questions": {"type": "integer", "minimum": 1, "maximum": MAX_QUESTIONS},
    },
    "additionalProperties": False,
}
QUESTION_EVENT: Final[Mapping[str, Any]] = {
    "type": "object",
    "required": ["index", "question", "choices", "answer"],
    "properties": {
        "index": {"type": "integer", "minimum": 0, "maximum": MAX_QUESTIONS - 1},
        "question": {"type": "string", "minLength": 1, "maxLength": MAX_QUESTION_CHARS},
        "choices": {
            "type": "array",
            "minItems": MIN_CHOICES,
            "maxItems": MAX_CHOICES,
            "items": {"type": "string", "minLength": 1, "maxLength": MAX_CHOICE_CHARS},
        },
        "answer": {"type": "integer", "minimum": 0, "maximum": MAX_CHOICES - 1},
    },
    "additionalProperties": False,
}

_WORD: Final = re.compile(r"[^\W\d_]{3,}")
_LETTERS: Final = "abcdef"


def instructions(count: int) -> str:
    """The system prompt a real model gets (the offline provider ignores it)."""
    return (
        f"You write multiple-choice quizzes. Write exactly {count} questions about the topic "
        f"the user gives. Answer with {count} lines and nothing else: each line one JSON "
        '{"question": "...", "choices": ["...", "..."], "answer": N}, where N is the index '
        f"of the right choice counted from 0, with {MIN_CHOICES} to {MAX_CHOICES} choices. "
        "No numbering, no code fences."
    )


def offline_answer(topic: str, count: int) -> str:
    """What the offline provider streams: `count` questions on the topic's words (how many
    letters each has), the right choice at a different place each time."""
    words = list(dict.fromkeys(word.lower() for word in _WORD.findall(topic))) or ["quiz"]
    lines = []
    for index in range(count):
        word = words[index % len(words)]
        offsets = [-1, 0, 1, 2]
        turn = index % len(offsets)
        offsets = offsets[turn:] + offsets[:turn]
        line = {
            "question": f"How many letters are in the word “{word}”?",
            "choices": [str(len(word) + offset) for offset in offsets],
            "answer": offsets.index(0),
        }
        lines.append(json.dumps(line, ensure_ascii=False) + "\n")
    return "".join(lines)


def parse_question(line: str) -> dict[str, Any] | None:
    """One line of the model's answer as a question, or None if it is not one that fits."""
    try:
        value = json.loads(line)
    except ValueError:
        return None
    if not isinstance(value, dict):
        return None
    question, choices, answer = value.get("question"), value.get("choices"), value.get("answer")
    if not isinstance(question, str) or not 0 < len(question.strip()) <= MAX_QUESTION_CHARS:
        return None
    if not isinstance(choices, list) or not MIN_CHOICES <= len(choices) <= MAX_CHOICES:
        return None
    if not all(isinstance(c, str) and 0 < len(c.strip()) <= MAX_CHOICE_CHARS for c in choices):
        return None
    # bool is an int to Python, not to JSON Schema: `true` is no index.
    if type(answer) is not int or not 0 <= answer < len(choices):
        return None
    return {"question": question.strip(), "choices": [c.strip() for c in choices], "answer": answer}


class _Lines:
    """The model's text cut into whole lines as it streams; an overlong line is dropped
    (and counted in `skipped`) instead of held."""

    def __init__(self) -> None:
        self._partial = ""
        self._overlong = False
        self.skipped = 0

    def feed(self, text: str) -> list[str]:
        *lines, self._partial = (self._partial + text).split("\n")
        if self._overlong and lines:
            lines.pop(0)  # the end of the line dropped before
            self._overlong = False
        if len(self._partial) > MAX_LINE_CHARS:
            self._partial, self._overlong = "", True
            self.skipped += 1
        return lines

    def end(self) -> list[str]:
        last, self._partial = self._partial, ""
        return [] if self._overlong else [last]


def _as_text(index: int, question: Mapping[str, Any]) -> str:
    choices = "".join(
        f"   {letter}) {choice}\n"
        for letter, choice in zip(_LETTERS, question["choices"], strict=False)
    )
    return f"{index + 1}. {question['question']}\n{choices}\n"


async def run(ctx: Context) -> Outcome:
    topic = " ".join(ctx.generation.prompt.split())[:MAX_TOPIC_CHARS] or "anything"
    wanted = int(ctx.generation.inputs.get("questions", DEFAULT_QUESTIONS))
    ctx.emit("quiz.topic", topic=topic, questions=wanted)
    await ctx.stage(TOPIC.id, "complete")
    await ctx.stage(QUESTIONS.id, "active", 0.0)
    ctx.say(f"A quiz on {topic}:\n\n")

    request = ModelRequest(
        prompt=topic, instructions=instructions(wanted), offline_text=offline_answer(topic, wanted)
    )
    questions: list[dict[str, Any]] = []
    lines = _Lines()

    async def take(line: str) -> None:
        if not line.strip() or len(questions) == wanted:
            return
        question = parse_question(line)
        if question is None:
            lines.skipped += 1
            return
        index = len(questions)
        questions.append(question)
        ctx.emit("quiz.question", index=index, **question)
        ctx.say(_as_text(index, question))
        await ctx.stage(QUESTIONS.id, "active", len(questions) / wanted)

    # Leaving the loop closes the model's stream: nothing is read past the last question.
    async for chunk in ctx.model(request):
        for line in lines.feed(chunk.text):
            await take(line)
        if len(questions) == wanted:
            break
    else:
        for line in lines.end():
            await take(line)

    await ctx.stage(QUESTIONS.id, "complete")
    if questions:
        key = ", ".join(f"{i + 1} {_LETTERS[q['answer']]}" for i, q in enumerate(questions))
        ctx.say(f"Answers: {key}.")
    else:
        ctx.say("The model wrote no question that could be used.")
    return Outcome(
        summary=f"{len(questions)} questions on {topic}",
        result={"topic": topic, "questions": questions, "skipped": lines.skipped},
    )


PIPELINE: Final = Pipeline(
    name="quiz",
    label="Quiz",
    description="A multiple-choice quiz on the prompt's topic (the example package genstream-quiz)",
    stages=(TOPIC, QUESTIONS, COMPLETE),
    events=(
        EventSpec("quiz.topic", TOPIC_EVENT, "the topic and how many questions were asked for"),
        EventSpec("quiz.question", QUESTION_EVENT, "one question, its choices and the answer"),
    ),
    run=run,
    inputs=INPUTS,
    pending="Writing a quiz...",
)
