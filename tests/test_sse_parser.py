"""The client's SSE parser against WHATWG HTML 9.2.6, split at every possible byte."""

from __future__ import annotations

from dataclasses import dataclass
from itertools import pairwise

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from service.client.sse_parser import Message, SSEParser


@dataclass(frozen=True)
class Parsed:
    messages: list[Message]
    last_event_id: str
    retry_ms: int | None


def reference(stream: bytes) -> Parsed:
    """WHATWG HTML 9.2.6 transcribed step by step, on the whole stream at once."""
    text = stream.decode("utf-8", errors="replace")
    if text.startswith("\ufeff"):
        text = text[1:]
    lines: list[str] = []
    line = ""
    i = 0
    while i < len(text):
        char = text[i]
        if char == "\r":
            lines.append(line)
            line = ""
            if text[i + 1 : i + 2] == "\n":
                i += 1
        elif char == "\n":
            lines.append(line)
            line = ""
        else:
            line += char
        i += 1
    # The text after the last line end is an incomplete line: discarded at end of file.
    data_buffer, event_type, id_buffer, last_event_id = "", "", "", ""
    retry: int | None = None
    messages: list[Message] = []
    for line in lines:
        if line == "":
            last_event_id = id_buffer
            if data_buffer == "":
                event_type = ""
                continue
            if data_buffer.endswith("\n"):
                data_buffer = data_buffer[:-1]
            messages.append(Message(event_type or "message", data_buffer, last_event_id))
            data_buffer, event_type = "", ""
            continue
        if line.startswith(":"):
            continue
        if ":" in line:
            field, value = line[: line.index(":")], line[line.index(":") + 1 :]
            if value.startswith(" "):
                value = value[1:]
        else:
            field, value = line, ""
        if field == "event":
            event_type = value
        elif field == "data":
            data_buffer += value + "\n"
        elif field == "id":
            if "\0" not in value:
                id_buffer = value
        elif field == "retry" and value and all(c in "0123456789" for c in value):
            retry = int(value)
    return Parsed(messages, last_event_id, retry)


def incremental(chunks: list[bytes]) -> Parsed:
    parser = SSEParser()
    messages: list[Message] = []
    for chunk in chunks:
        messages.extend(parser.feed(chunk))
    parser.close()
    return Parsed(messages, parser.last_event_id, parser.retry_ms)


def split(stream: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({0, len(stream), *(c % (len(stream) + 1) for c in cuts)})
    return [stream[a:b] for a, b in pairwise(points)]


M = Message


@pytest.mark.parametrize(
    ("stream", "expected"),
    [
        pytest.param(
            b"data: first\n\ndata: second, it\ndata: has two lines.\n\n",
            [M("message", "first", ""), M("message", "second, it\nhas two lines.", "")],
            id="spec-multi-line-data",
        ),
        pytest.param(
            b": test stream\n\ndata: first event\nid: 1\n\ndata:second event\nid\n\n"
            b"data:  third event\n\n",
            [
                M("message", "first event", "1"),
                M("message", "second event", ""),
                M("message", " third event", ""),
            ],
            id="spec-id-reset-by-bare-field-and-one-space-removed",
        ),
        pytest.param(
            b"data\n\ndata\ndata\n\ndata:",
            [M("message", "", ""), M("message", "\n", "")],
            id="spec-field-without-colon-and-unfinished-event-discarded",
        ),
        pytest.param(
            b"data:test\r\n\r\ndata: test\r\r",
            [M("message", "test", ""), M("message", "test", "")],
            id="crlf-and-cr",
        ),
        pytest.param(
            b"event: stage\nid: 7\ndata: {}\n\n",
            [M("stage", "{}", "7")],
            id="event-type",
        ),
        pytest.param(
            b"id: 7\ndata: a\n\nid: 8\x00\ndata: b\n\n",
            [M("message", "a", "7"), M("message", "b", "7")],
            id="id-with-NUL-ignored",
        ),
        pytest.param(
            b"\xef\xbb\xbfdata: a\n\n\xef\xbb\xbfdata: b\n\n",
            # A later BOM is part of the field name "\ufeffdata", which is unknown.
            [M("message", "a", "")],
            id="bom-ignored-at-start-only",
        ),
        pytest.param(
            b"event: x\n\ndata: a\n\n",
            [M("message", "a", "")],
            id="event-without-data-resets-type",
        ),
        pytest.param(
            b"dat\xc3\xa9: x\ndata: caf\xc3\xa9 \xff\n\n",
            [M("message", "café \ufffd", "")],
            id="unknown-field-and-invalid-utf8",
        ),
    ],
)
def test_parses_as_the_spec_says(stream: bytes, expected: list[Message]) -> None:
    assert incremental([stream]).messages == expected
    assert reference(stream).messages == expected
    # One byte at a time splits every CRLF and every UTF-8 character.
    assert incremental([bytes([b]) for b in stream]).messages == expected


@pytest.mark.parametrize(
    ("stream", "retry"),
    [
        pytest.param(b"retry: 1500\n\n", 1500, id="digits"),
        pytest.param(b"retry: 1500\nretry: 1e3\n\n", 1500, id="not-digits-ignored"),
        pytest.param(b"retry:\n\n", None, id="empty-ignored"),
        pytest.param(b"retry: -1\n\n", None, id="negative-ignored"),
        pytest.param("retry: ١٢\n\n".encode(), None, id="non-ascii-digits-ignored"),
        pytest.param(b"retry: 20", None, id="unfinished-line-ignored"),
    ],
)
def test_retry_is_honoured_only_when_all_ascii_digits(stream: bytes, retry: int | None) -> None:
    assert incremental([stream]).retry_ms == retry == reference(stream).retry_ms


def test_cr_ending_one_chunk_and_lf_starting_the_next_is_one_line_end() -> None:
    parser = SSEParser()
    assert parser.feed(b"data: a\r") == []
    # Were this LF a second line end, the empty line would dispatch "a" here.
    assert parser.feed(b"\n") == []
    assert parser.feed(b"data: b\r") == []
    assert parser.feed(b"\r") == [M("message", "a\nb", "")]


def test_the_last_event_id_is_taken_at_a_blank_line_even_without_data() -> None:
    parser = SSEParser()
    parser.feed(b"id: 41\n")
    assert parser.last_event_id == ""
    parser.feed(b"\n")
    assert parser.last_event_id == "41"


def test_an_unfinished_event_at_end_of_stream_is_not_dispatched() -> None:
    parser = SSEParser()
    assert parser.feed(b"data: half") == []
    parser.close()
    assert parser.feed(b"\n\n") == []


_TOKENS = st.sampled_from(
    [
        b"data",
        b"event",
        b"id",
        b"retry",
        b":",
        b": ",
        b" ",
        b"\r",
        b"\n",
        b"\r\n",
        b"\n\n",
        b"\x00",
        b"\xef\xbb\xbf",
        b"42",
        b"x",
        "é".encode(),
        "😀".encode(),
        b"\xff",
        b"\xe2\x82",
    ]
)
_FIELD = st.tuples(
    st.sampled_from([b"data", b"event", b"id", b"retry", b"", b"other"]),
    st.sampled_from([b":", b": ", b""]),
    st.binary(max_size=8) | st.sampled_from([b"12", "ü".encode(), b"1\x002"]),
    st.sampled_from([b"\n", b"\r", b"\r\n"]),
).map(b"".join)
_STREAMS = st.tuples(
    st.sampled_from([b"", b"\xef\xbb\xbf"]),
    st.one_of(
        st.lists(_TOKENS, max_size=40).map(b"".join),
        st.lists(_FIELD, max_size=20).map(b"".join),
        st.binary(max_size=64),
    ),
).map(b"".join)


@settings(max_examples=400, deadline=None)
@given(stream=_STREAMS, cuts=st.lists(st.integers(min_value=0), max_size=12))
def test_any_chunk_split_parses_like_the_spec_on_the_whole_stream(
    stream: bytes, cuts: list[int]
) -> None:
    assert incremental(split(stream, cuts)) == reference(stream)
