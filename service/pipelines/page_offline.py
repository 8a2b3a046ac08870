"""What the page pipeline knows without a model: the question's words, its intent and
pain points by keywords, and the deterministic answers the offline provider streams
(ModelRequest.offline_text): the intent as JSON, the chat answer, the page spec as JSON.

Each is a function of the question, the visitor's persona and the knowledge base's hits
only, so a run with the offline provider gives the same events every time. The answers
are held to the same schemas as a model's (page_schemas.py): every string is cleaned
and cut to its bound here.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from typing import Any, Final

from service.pipelines import page_schemas as schemas
from service.storage.interface import DocumentHit, PersonaRow

_WORD: Final = re.compile(r"\w+")
# Control characters (but newline) and lone surrogates: what a page's text may not hold.
_UNCLEAN: Final = re.compile(r"[\x00-\x09\x0b-\x1f\x7f\ud800-\udfff]+")
# Words that say nothing of what the visitor looks for: left out of the search, where
# SQLite's FTS5 would rank a document for holding "the" (PostgreSQL's english
# configuration drops them itself).
STOPWORDS: Final = frozenset({
    "a", "about", "an", "and", "are", "as", "at", "be", "can", "could", "do", "does", "for",
    "from", "how", "i", "in", "is", "it", "me", "my", "of", "on", "or", "our", "please",
    "should", "the", "this", "to", "we", "what", "when", "where", "which", "who", "why",
    "will", "with", "would", "you", "your",
})  # fmt: skip
MAX_QUERY_WORDS: Final = 32

# Keywords of each intent, in the order a tie is decided.
INTENT_KEYWORDS: Final[dict[str, tuple[str, ...]]] = {
    "pricing": (
        "price", "pricing", "cost", "plan", "billing", "expensive", "cheap", "discount",
        "trial", "subscription", "pay", "invoice", "quote", "budget", "seat",
    ),
    "integration": (
        "integrate", "integration", "api", "sdk", "webhook", "connect", "plugin", "import",
        "export", "sync", "salesforce", "hubspot", "slack", "zapier", "migrate",
    ),
    "support": (
        "help", "support", "broken", "bug", "error", "problem", "fix", "crash", "outage",
        "refund", "contact", "ticket", "stuck", "fail",
    ),
    "features": (
        "feature", "does", "capability", "dashboard", "report", "analytics", "automation",
        "workflow", "security", "sso", "offer", "include", "function",
    ),
}  # fmt: skip
# A pain point and the words that show it.
PAIN_POINTS: Final[tuple[tuple[str, tuple[str, ...]], ...]] = (
    ("cost", ("expensive", "cost", "budget", "afford", "overpriced", "cheaper", "price")),
    ("performance", ("slow", "latency", "performance", "speed", "lag", "timeout")),
    ("integration effort", ("integrate", "integration", "migrate", "migration", "legacy")),
    ("security", ("security", "secure", "compliance", "gdpr", "soc", "hipaa", "privacy")),
    ("reliability", ("downtime", "outage", "crash", "broken", "unreliable", "bug", "error")),
    ("complexity", ("complicated", "complex", "confusing", "difficult", "setup", "onboarding")),
    ("scaling", ("scale", "scaling", "growth", "traffic", "volume")),
    ("support", ("support", "help", "ticket", "waiting")),
)
LEADS: Final = {
    "pricing": "Here is how our pricing works for you",
    "features": "Here is what the product does",
    "integration": "Here is how it connects to the tools you use",
    "support": "Here is how we can help",
    "other": "Thanks for your question",
}
TITLES: Final = {
    "pricing": "Pricing",
    "features": "Features",
    "integration": "Integrations",
    "support": "Support",
    "other": "Overview",
}
CALLS: Final = {
    "pricing": "Talk to sales",
    "support": "Contact support",
}
# Hits that get a text section of their own.
TEXT_SECTIONS: Final = 3
# A keyword matches a word that is it or it with a short ending (plans, pricing's
# "prices", integrations), not any word it starts ("hard" is not "hardware").
MAX_ENDING: Final = 3
MIN_STEM: Final = 4


def words(text: str) -> list[str]:
    return [word.lower() for word in _WORD.findall(text)]


def matches(word: str, keyword: str) -> bool:
    if word == keyword:
        return True
    return (
        len(keyword) >= MIN_STEM
        and word.startswith(keyword[:-1] if keyword.endswith("e") else keyword)
        and len(word) - len(keyword) <= MAX_ENDING
    )


def _hits(found: list[str], keywords: Sequence[str]) -> int:
    return sum(any(matches(word, keyword) for keyword in keywords) for word in found)


def intent(question: str) -> tuple[str, float]:
    """The intent most of the question's words point at, and how sure that is."""
    found = words(question)
    scores = {name: _hits(found, keywords) for name, keywords in INTENT_KEYWORDS.items()}
    best = max(scores, key=lambda name: scores[name])  # the first of a tie
    if not scores[best]:
        return "other", 0.5
    total = sum(scores.values())
    return best, round(0.5 + 0.5 * scores[best] / (total + 1), 2)


def intent_reply(question: str) -> str:
    name, confidence = intent(question)
    return json.dumps({"intent": name, "confidence": confidence})


def pain_points(question: str) -> list[str]:
    """The pain points the question shows, in PAIN_POINTS' order."""
    found = words(question)
    return [name for name, keywords in PAIN_POINTS if _hits(found, keywords)]


def search_query(question: str) -> str:
    """The question's words to search for: each once, stopwords left out (all of them
    kept when nothing else is left), at most MAX_QUERY_WORDS."""
    found = list(dict.fromkeys(words(question)))
    kept = [word for word in found if word not in STOPWORDS] or found
    return " ".join(kept[:MAX_QUERY_WORDS])[: schemas.MAX_QUERY]


def clean(text: str, limit: int) -> str:
    """`text` as page text: runs of control characters a space, at most `limit`."""
    cleaned = _UNCLEAN.sub(" ", text).strip()
    if len(cleaned) <= limit:
        return cleaned
    return cleaned[: limit - 1].rstrip() + "…"


def _listing(names: Sequence[str]) -> str:
    if len(names) <= 1:
        return "".join(names)
    return ", ".join(names[:-1]) + " and " + names[-1]


def answer(
    question: str, intent_name: str, persona: PersonaRow, hits: Sequence[DocumentHit]
) -> str:
    """The chat answer: what the knowledge base says, for this visitor."""
    lead = LEADS[intent_name]
    lines = [f"Welcome back! {lead}." if persona.visits > 1 else f"{lead}."]
    if hits:
        lines.append("From our knowledge base:")
        lines += [f"- {hit.title}: {clean(hit.snippet, schemas.MAX_ITEM)}" for hit in hits]
    else:
        lines.append("Our knowledge base has nothing on that yet: our team can answer it directly.")
    if persona.pain_points:
        lines.append(f"You mentioned {_listing(persona.pain_points)}: the page below covers it.")
    lines.append("I put together a page with the details.")
    return "\n".join(lines) + "\n"


def page(
    question: str,
    intent_name: str,
    persona: PersonaRow,
    hits: Sequence[DocumentHit],
) -> dict[str, Any]:
    """The page spec: a hero, the hits as features and text sections, the question as
    an FAQ, a call to action."""
    title = TITLES[intent_name]
    if hits:
        title = f"{title}: {hits[0].title}"
    sections = [
        _section("hero", title, LEADS[intent_name] + "."),
    ]
    if hits:
        titles = [clean(hit.title, schemas.MAX_ITEM) for hit in hits[: schemas.MAX_ITEMS]]
        sections.append(_section("features", "What you get", "", titles))
        sections += [_section("text", hit.title, hit.snippet) for hit in hits[:TEXT_SECTIONS]]
    sections.append(_section("faq", "Your question", "", [question]))
    worries = _listing(persona.pain_points)
    body = f"We can help with {worries}." if worries else "Tell us what you need."
    sections.append(_section("cta", CALLS.get(intent_name, "Get started"), body))
    return {"title": clean(title, schemas.MAX_PAGE_TITLE), "sections": sections}


def page_reply(
    question: str, intent_name: str, persona: PersonaRow, hits: Sequence[DocumentHit]
) -> str:
    return json.dumps(page(question, intent_name, persona, hits))


def _section(kind: str, heading: str, body: str, items: Sequence[str] = ()) -> dict[str, Any]:
    return {
        "kind": kind,
        "heading": clean(heading, schemas.MAX_HEADING),
        "body": clean(body, schemas.MAX_BODY),
        "items": [clean(item, schemas.MAX_ITEM) for item in items[: schemas.MAX_ITEMS]],
    }
