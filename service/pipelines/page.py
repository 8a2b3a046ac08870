"""The `page` pipeline: a sales site's chat widget that answers a visitor's question and
builds a landing page for it.

Five stages, then complete: the question's intent (the model, a JSON reply), the
visitor's signals (pain points by keywords, the persona kept per visitor updated in the
transaction of its event), the knowledge base searched with the question's words (the
project's documents, full-text search), the answer (the model, streamed as chat text),
and the page (the model, a JSON page spec sent section by section, then whole).

The model's JSON replies are untrusted (replies.py): parsed strictly and held to the
schemas of page_schemas.py, whose bounds the instructions below tell the model. With the
offline provider each answer is page_offline.py's deterministic one.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Final

from service.eventlog.event import now_ms
from service.eventlog.journal import Emit
from service.generation.pipeline import Context, Outcome, Pipeline, Stage
from service.generation.providers.base import ModelRequest, ProviderError
from service.pipelines import page_offline as offline
from service.pipelines import page_schemas as schemas
from service.pipelines.replies import BAD_RESPONSE, json_reply
from service.storage.interface import DocumentHit, PersonaRow, Tx

INTENT: Final = Stage("intent", "Understanding the question", 10, 20)
SIGNALS: Final = Stage("signals", "Reading signals", 30, 40)
KNOWLEDGE: Final = Stage("knowledge", "Searching the knowledge base", 50, 60)
RESPONSE: Final = Stage("response", "Writing the answer", 70, 80)
PAGE: Final = Stage("page", "Building the page", 85, 95)
COMPLETE: Final = Stage("complete", "Complete", 100, 100)
STAGES: Final = (INTENT, SIGNALS, KNOWLEDGE, RESPONSE, PAGE, COMPLETE)

# The JSON replies are small: a reply longer than this is no intent or page at all.
MAX_INTENT_REPLY: Final = 1_000
MAX_PAGE_REPLY: Final = 40_000
# What of the answer the page's request quotes.
MAX_QUOTED_ANSWER: Final = 4_000

INTENT_INSTRUCTIONS: Final = f"""\
You classify a visitor's question on a product's website. Answer with one JSON object \
and nothing else (no Markdown, no code fence): {{"intent": one of \
{", ".join(f'"{name}"' for name in schemas.INTENTS)}, "confidence": a number from 0 to 1}}.
"""
RESPONSE_INSTRUCTIONS: Final = """\
You answer a visitor's question on a product's website, in a few short lines of plain \
text (no HTML, no Markdown headings). Use the knowledge base excerpts you are given; \
when they do not answer the question, say so and offer to put the visitor in touch with \
the team. Speak to the visitor's pain points when they are given.
"""
PAGE_INSTRUCTIONS: Final = f"""\
You write the spec of a landing page that answers a visitor's question, from the answer \
they were given and the knowledge base excerpts. Answer with one JSON object and nothing \
else (no Markdown, no code fence): {{"title": a string of 1 to {schemas.MAX_PAGE_TITLE} \
characters, "sections": a list of 1 to {schemas.MAX_SECTIONS} sections}}, each section \
{{"kind": one of {", ".join(f'"{kind}"' for kind in schemas.KINDS)}, "heading": at most \
{schemas.MAX_HEADING} characters, "body": at most {schemas.MAX_BODY} characters, \
"items": a list of at most {schemas.MAX_ITEMS} strings of at most {schemas.MAX_ITEM} \
characters}}, every field present. Plain text only: no HTML, no Markdown, no control \
characters but newlines. Start with a hero and end with a cta.
"""


async def run(ctx: Context) -> Outcome:
    generation = ctx.generation
    question = generation.prompt
    visitor = str(generation.inputs.get("visitor_id", schemas.DEFAULT_VISITOR))

    intent = await _intent(ctx, question)
    await ctx.stage(INTENT.id, "complete")

    await ctx.stage(SIGNALS.id, "active")
    persona = await _signals(ctx, question, visitor, intent)
    await ctx.stage(SIGNALS.id, "complete")

    await ctx.stage(KNOWLEDGE.id, "active")
    hits = await _knowledge(ctx, question)
    await ctx.stage(KNOWLEDGE.id, "complete")

    await ctx.stage(RESPONSE.id, "active")
    answer = await _respond(ctx, question, intent, persona, hits)
    await ctx.stage(RESPONSE.id, "complete")

    await ctx.stage(PAGE.id, "active")
    page = await _page(ctx, question, answer, intent, persona, hits)
    await ctx.stage(PAGE.id, "complete")

    sections = len(page["sections"])
    summary = f"Answered a {intent} question with a page of {sections} sections."
    return Outcome(text=answer, summary=summary, result={"answer": answer, "page": page})


async def _intent(ctx: Context, question: str) -> str:
    request = ModelRequest(
        prompt=question,
        instructions=INTENT_INSTRUCTIONS,
        offline_text=offline.intent_reply(question),
    )
    reply = await json_reply(
        ctx, request, schemas.INTENT_REPLY, what="the intent", max_chars=MAX_INTENT_REPLY
    )
    ctx.emit(schemas.INTENT, intent=reply["intent"], confidence=reply["confidence"])
    return str(reply["intent"])


async def _signals(ctx: Context, question: str, visitor: str, intent: str) -> PersonaRow:
    """The question's pain points, and the visitor's persona updated with them: the row
    and its page.signals event in one transaction (both stored, or neither)."""
    found = offline.pain_points(question)
    project_id = ctx.generation.project_id

    async def update(tx: Tx, emit: Emit) -> PersonaRow:
        stored = await tx.persona(project_id, visitor)
        persona = _updated(stored, project_id, visitor, found, intent)
        await tx.upsert_persona(persona)
        await emit(
            ctx.draft(
                schemas.SIGNALS, visitor_id=visitor, pain_points=found, persona=_view(persona)
            )
        )
        return persona

    return await ctx.transact(update)


def _updated(
    stored: PersonaRow | None, project_id: str, visitor: str, found: list[str], intent: str
) -> PersonaRow:
    interests = [intent] if intent != "other" else []
    if stored is None:
        return PersonaRow(project_id, visitor, tuple(found), tuple(interests), 1, now_ms())
    return PersonaRow(
        project_id,
        visitor,
        _merged(stored.pain_points, found),
        _merged(stored.interests, interests),
        stored.visits + 1,
        now_ms(),
    )


def _merged(kept: Sequence[str], new: Sequence[str]) -> tuple[str, ...]:
    """Each label once, the latest last; the oldest go past MAX_PERSONA_ITEMS."""
    merged = [label for label in kept if label not in new] + list(dict.fromkeys(new))
    return tuple(merged[-schemas.MAX_PERSONA_ITEMS :])


def _view(persona: PersonaRow) -> dict[str, Any]:
    return {
        "visitor_id": persona.visitor_id,
        "pain_points": list(persona.pain_points),
        "interests": list(persona.interests),
        "visits": persona.visits,
        "updated_at": persona.updated_at,
    }


async def _knowledge(ctx: Context, question: str) -> list[DocumentHit]:
    query = offline.search_query(question)
    found = await ctx.storage.search_documents(ctx.generation.project_id, query, schemas.MAX_HITS)
    # Cut to the event's bounds: a document's title and snippet are the project's own
    # text, of any length the documents API allowed.
    hits = [
        DocumentHit(
            hit.document_id,
            hit.title[: schemas.MAX_HIT_TITLE],
            hit.snippet[: schemas.MAX_SNIPPET],
            hit.rank,
        )
        for hit in found
    ]
    results = [
        {"document_id": h.document_id, "title": h.title, "snippet": h.snippet, "rank": h.rank}
        for h in hits
    ]
    ctx.emit(schemas.KNOWLEDGE, query=query, results=results)
    return hits


def _context(persona: PersonaRow, hits: Sequence[DocumentHit]) -> str:
    """What the model is told besides the question: the visitor and the excerpts."""
    lines = [
        f"The visitor: visit {persona.visits}; pain points: "
        f"{', '.join(persona.pain_points) or 'none said'}; interests: "
        f"{', '.join(persona.interests) or 'none said'}.",
        "Knowledge base excerpts:" if hits else "The knowledge base has nothing on this.",
    ]
    lines += [f"[{n}] {hit.title}: {hit.snippet}" for n, hit in enumerate(hits, 1)]
    return "\n".join(lines)


async def _respond(
    ctx: Context, question: str, intent: str, persona: PersonaRow, hits: Sequence[DocumentHit]
) -> str:
    """The chat answer, said as it arrives."""
    request = ModelRequest(
        prompt=f"{_context(persona, hits)}\n\nThe visitor's question:\n{question}",
        instructions=RESPONSE_INSTRUCTIONS,
        offline_text=offline.answer(question, intent, persona, hits),
    )
    said: list[str] = []
    async for chunk in ctx.model(request):
        if chunk.text:
            said.append(chunk.text)
            ctx.say(chunk.text)
    answer = "".join(said).strip()
    if not answer:
        raise ProviderError(BAD_RESPONSE, "the model's answer was empty", retryable=True)
    return answer


async def _page(
    ctx: Context,
    question: str,
    answer: str,
    intent: str,
    persona: PersonaRow,
    hits: Sequence[DocumentHit],
) -> dict[str, Any]:
    """The page spec, checked whole before its first section is sent: a page is sent
    complete or not at all."""
    request = ModelRequest(
        prompt=(
            f"{_context(persona, hits)}\n\nThe visitor's question:\n{question}\n\n"
            f"The answer they were given:\n{answer[:MAX_QUOTED_ANSWER]}"
        ),
        instructions=PAGE_INSTRUCTIONS,
        offline_text=offline.page_reply(question, intent, persona, hits),
    )
    page = await json_reply(
        ctx, request, schemas.PAGE_REPLY, what="the page spec", max_chars=MAX_PAGE_REPLY
    )
    for index, section in enumerate(page["sections"]):
        ctx.emit(schemas.SECTION, index=index, section=section)
    ctx.emit(schemas.PAGE, page=page)
    return page


PIPELINE: Final = Pipeline(
    name="page",
    label="Landing page",
    description=(
        "A sales site's chat: the question's intent, the visitor's signals and persona, "
        "the knowledge base, the answer, and a landing page built for it."
    ),
    stages=STAGES,
    run=run,
    events=schemas.EVENTS,
    inputs=schemas.INPUTS,
    pending="Thinking...",
)
