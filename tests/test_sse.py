"""The SSE wire format, byte for byte."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from service.eventlog import sse
from service.eventlog.event import ALL_TYPES


@pytest.mark.parametrize(
    ("data", "event", "event_id", "expected"),
    [
        pytest.param(b"{}", None, None, b"data: {}\n\n", id="data-only"),
        pytest.param(
            b'{"a":1}', "stage", 7, b'id: 7\nevent: stage\ndata: {"a":1}\n\n', id="id-event-data"
        ),
        pytest.param(b"one\ntwo", None, None, b"data: one\ndata: two\n\n", id="data-with-LF"),
        pytest.param(b"one\r\ntwo", None, None, b"data: one\ndata: two\n\n", id="data-with-CRLF"),
        pytest.param(b"one\rtwo", None, None, b"data: one\ndata: two\n\n", id="data-with-CR"),
        pytest.param(b"end\n", None, None, b"data: end\ndata: \n\n", id="data-trailing-newline"),
        pytest.param(b"", "x", 0, b"id: 0\nevent: x\ndata: \n\n", id="empty-data"),
        pytest.param(
            b"data: fake\n\nid: 99",
            None,
            3,
            b"id: 3\ndata: data: fake\ndata: \ndata: id: 99\n\n",
            id="data-that-looks-like-fields",
        ),
    ],
)
def test_frame_bytes(data: bytes, event: str | None, event_id: int | None, expected: bytes) -> None:
    assert sse.frame(data, event=event, event_id=event_id) == expected


@pytest.mark.parametrize(
    ("event", "event_id"),
    [
        pytest.param("a\nb", None, id="event-with-LF"),
        pytest.param("a\rb", None, id="event-with-CR"),
        pytest.param("a\x00b", None, id="event-with-NUL"),
        pytest.param(None, "1\n2", id="id-with-LF"),
        pytest.param(None, "1\r2", id="id-with-CR"),
        pytest.param(None, "1\x002", id="id-with-NUL"),
    ],
)
def test_frame_refuses_field_injection(event: str | None, event_id: str | None) -> None:
    with pytest.raises(ValueError, match="cannot contain CR, LF or NUL"):
        sse.frame(b"x", event=event, event_id=event_id)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param("ping", b": ping\n\n", id="one-line"),
        pytest.param("a\nb", b": a\n: b\n\n", id="multi-line"),
        pytest.param("a\r\nb", b": a\n: b\n\n", id="crlf"),
    ],
)
def test_comment_bytes(text: str, expected: bytes) -> None:
    assert sse.comment(text) == expected


def test_retry_bytes() -> None:
    assert sse.retry(3000) == b"retry: 3000\n\n"
    with pytest.raises(ValueError, match="non-negative"):
        sse.retry(-1)


def test_ping_is_a_comment() -> None:
    assert sse.comment("ping") == sse.PING


@given(
    data=st.binary(max_size=300).filter(lambda b: b"\n" not in b and b"\r" not in b),
    event=st.sampled_from(sorted(ALL_TYPES)),
    event_id=st.integers(min_value=0, max_value=2**63),
)
def test_one_line_fast_path_frames_as_the_general_path_does(
    data: bytes, event: str, event_id: int
) -> None:
    # An int id takes the one-format fast path; the same id as text takes the general one.
    assert sse.frame(data, event=event, event_id=event_id) == sse.frame(
        data, event=event, event_id=str(event_id)
    )


@pytest.mark.parametrize("event_id", [7, "7"], ids=["int-id", "text-id"])
def test_event_name_with_line_break_is_refused_on_every_path(event_id: int | str) -> None:
    with pytest.raises(ValueError, match="event name"):
        sse.frame(b"{}", event="stage\nevil", event_id=event_id)
