"""The page pipeline's vocabulary: its event types, the JSON Schema of each payload, and
the bounds on every string and list in them.

The same schemas check the model's replies (the intent and the page spec are JSON a
model writes: untrusted) and the events the pipeline emits, so what a client receives
is bounded exactly as the model was told (page.py's instructions name these numbers).
"""

from __future__ import annotations

from typing import Any, Final

from jsonschema import Draft202012Validator

from service.eventlog.schemas import exact
from service.generation.pipeline import EventSpec

Schema = dict[str, Any]

INTENT: Final = "page.intent"
SIGNALS: Final = "page.signals"
KNOWLEDGE: Final = "page.knowledge"
SECTION: Final = "page.section"
PAGE: Final = "page"

INTENTS: Final = ("pricing", "features", "integration", "support", "other")
KINDS: Final = ("hero", "features", "faq", "cta", "text")

MAX_VISITOR_ID: Final = 128
DEFAULT_VISITOR: Final = "anonymous"
# A persona keeps the latest of each (a label of page_offline's vocabulary).
MAX_PERSONA_ITEMS: Final = 10
MAX_LABEL: Final = 64
# The knowledge search: at most this many hits, each cut to these lengths.
MAX_HITS: Final = 5
MAX_QUERY: Final = 1000
MAX_HIT_TITLE: Final = 200
MAX_SNIPPET: Final = 1000
# A page: what the web page renders section by section.
MAX_PAGE_TITLE: Final = 120
MAX_SECTIONS: Final = 8
MAX_HEADING: Final = 120
MAX_BODY: Final = 2000
MAX_ITEMS: Final = 8
MAX_ITEM: Final = 200

# Model-written text: no control character but tab and newline, no lone surrogate (JSON
# can spell both, and the page renders the text as it is). One pattern for Python's re
# and ECMAScript alike.
CLEAN_PATTERN: Final = r"^[^\x00-\x08\x0b-\x1f\x7f\ud800-\udfff]*$"


def _text(max_length: int, min_length: int = 0) -> Schema:
    return {
        "type": "string",
        "minLength": min_length,
        "maxLength": max_length,
        "pattern": CLEAN_PATTERN,
    }


def _exact(**properties: Schema) -> Schema:
    """An object of exactly these fields, each required."""
    return exact(properties)


def _list(items: Schema, max_items: int, min_items: int = 0) -> Schema:
    return {"type": "array", "items": items, "minItems": min_items, "maxItems": max_items}


_LABELS: Final = _list(
    {"type": "string", "minLength": 1, "maxLength": MAX_LABEL}, MAX_PERSONA_ITEMS
)
_VISITOR: Final[Schema] = {"type": "string", "minLength": 1, "maxLength": MAX_VISITOR_ID}

INPUTS: Final[Schema] = {
    "type": "object",
    "properties": {
        # Control characters are refused: the id is a database key and a URL segment
        # (GET /api/projects/{pid}/personas/{visitor_id}).
        "visitor_id": {**_VISITOR, "pattern": r"^[^\x00-\x1f\x7f/]+$"},
    },
    "additionalProperties": False,
}

INTENT_PAYLOAD: Final = _exact(
    intent={"enum": list(INTENTS)},
    confidence={"type": "number", "minimum": 0, "maximum": 1},
)
PERSONA: Final = _exact(
    visitor_id=_VISITOR,
    pain_points=_LABELS,
    interests=_LABELS,
    visits={"type": "integer", "minimum": 1},
    updated_at={"type": "integer", "minimum": 0},
)
SIGNALS_PAYLOAD: Final = _exact(visitor_id=_VISITOR, pain_points=_LABELS, persona=PERSONA)
HIT: Final = _exact(
    document_id={"type": "string", "minLength": 1},
    title={"type": "string", "maxLength": MAX_HIT_TITLE},
    snippet={"type": "string", "maxLength": MAX_SNIPPET},
    rank={"type": "number"},
)
KNOWLEDGE_PAYLOAD: Final = _exact(
    query={"type": "string", "maxLength": MAX_QUERY}, results=_list(HIT, MAX_HITS)
)
PAGE_SECTION: Final = _exact(
    kind={"enum": list(KINDS)},
    heading=_text(MAX_HEADING),
    body=_text(MAX_BODY),
    items=_list(_text(MAX_ITEM), MAX_ITEMS),
)
PAGE_SPEC: Final = _exact(
    title=_text(MAX_PAGE_TITLE, 1),
    sections=_list(PAGE_SECTION, MAX_SECTIONS, 1),
)
SECTION_PAYLOAD: Final = _exact(
    index={"type": "integer", "minimum": 0, "maximum": MAX_SECTIONS - 1}, section=PAGE_SECTION
)
PAGE_PAYLOAD: Final = _exact(page=PAGE_SPEC)

EVENTS: Final = (
    EventSpec(INTENT, INTENT_PAYLOAD, "The visitor's question classified."),
    EventSpec(
        SIGNALS,
        SIGNALS_PAYLOAD,
        "The pain points this question shows, and the visitor's persona as stored after it.",
    ),
    EventSpec(
        KNOWLEDGE, KNOWLEDGE_PAYLOAD, "The knowledge base searched with the question's words."
    ),
    EventSpec(SECTION, SECTION_PAYLOAD, "One section of the page, in order, as it is ready."),
    EventSpec(PAGE, PAGE_PAYLOAD, "The whole page: its title and the sections sent before it."),
)

# The model's replies are held to the payloads' own schemas.
INTENT_REPLY: Final = Draft202012Validator(INTENT_PAYLOAD)
PAGE_REPLY: Final = Draft202012Validator(PAGE_SPEC)
