"""service/generation/text.py: the model's text made valid Unicode, whatever the chunks."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncGenerator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from service.generation.providers.base import Chunk, Usage
from service.generation.text import REPLACEMENT, SurrogateJoiner, valid, whole_characters

SMILE = "\U0001f600"
HIGH, LOW = "\ud83d", "\ude00"  # SMILE's pair, as two JSON escapes decode


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param("plain ascii", "plain ascii", id="ascii"),
        pytest.param("café 😀", "café 😀", id="valid-unicode"),
        pytest.param(HIGH + LOW, SMILE, id="pair-joined"),
        pytest.param("s\ud800.txt", f"s{REPLACEMENT}.txt", id="lone-high"),
        pytest.param("s\udc00.txt", f"s{REPLACEMENT}.txt", id="lone-low"),
        pytest.param(LOW + HIGH, REPLACEMENT * 2, id="pair-in-the-wrong-order"),
        pytest.param(HIGH + HIGH + LOW, REPLACEMENT + SMILE, id="high-then-pair"),
    ],
)
def test_valid_joins_pairs_and_replaces_lone_surrogates(text: str, expected: str) -> None:
    assert valid(text) == expected


def test_a_pair_cut_between_two_chunks_is_one_character() -> None:
    joiner = SurrogateJoiner()
    assert joiner.feed("Hi " + HIGH) == "Hi "
    assert joiner.feed(LOW + " there") == SMILE + " there"
    assert joiner.finish() == ""


def test_a_high_surrogate_that_ends_the_stream_is_a_replacement_character() -> None:
    joiner = SurrogateJoiner()
    assert joiner.feed(HIGH) == ""
    assert joiner.feed("x") == REPLACEMENT + "x"
    assert joiner.feed(HIGH) == ""
    assert joiner.finish() == REPLACEMENT


# Text with surrogates in it, lone or paired, among other characters.
texts = st.text(
    st.one_of(
        st.characters(exclude_categories=()),  # Cs (surrogates) included
        st.sampled_from([HIGH, LOW, "\ud800", "\udfff"]),
    ),
    max_size=30,
)


@settings(max_examples=300, deadline=None)
@given(st.lists(texts, max_size=8))
def test_any_split_gives_what_the_whole_text_gives(chunks: list[str]) -> None:
    joiner = SurrogateJoiner()
    joined = "".join(joiner.feed(chunk) for chunk in chunks) + joiner.finish()
    assert joined == valid("".join(chunks))
    joined.encode()  # valid: any UTF-8 holds it (the journal, SSE)


async def test_whole_characters_passes_the_provider_s_chunks_through_joined() -> None:
    closed = []

    async def provider() -> AsyncGenerator[Chunk, None]:
        try:
            yield Chunk(text="a" + HIGH, progress=0.5)
            yield Chunk(text=LOW + "b")
            yield Chunk(usage=Usage(1, 2))
            yield Chunk(text="end" + HIGH)
        finally:
            closed.append(True)

    chunks = [chunk async for chunk in whole_characters(provider())]
    assert chunks == [
        Chunk(text="a", progress=0.5),
        Chunk(text=SMILE + "b"),
        Chunk(usage=Usage(1, 2)),
        Chunk(text="end"),
        Chunk(text=REPLACEMENT),
    ]
    assert closed == [True]


async def test_closing_whole_characters_closes_the_provider_s_stream() -> None:
    # generation.py closes the stream it reads on any failure: the provider's HTTP
    # connection must close with it, not whenever the collector finalizes it.
    closed = []

    async def provider() -> AsyncGenerator[Chunk, None]:
        try:
            while True:
                yield Chunk(text="more")
        finally:
            closed.append(True)

    async with contextlib.aclosing(whole_characters(provider())) as chunks:
        async for chunk in chunks:
            assert chunk.text == "more"
            break
    assert closed == [True]
