from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable
from dataclasses import dataclass, field

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from service.generation.parser import (
    MAX_TAG_LINE,
    FileCompleted,
    FileDelta,
    FileRejected,
    FileStarted,
    Item,
    OutputParser,
    TextDelta,
)
from service.paths import UnsafePath, check_path

PROPERTY_SETTINGS = settings(max_examples=200, deadline=None)


def parse(chunks: Iterable[str]) -> list[Item]:
    parser = OutputParser()
    items = [item for chunk in chunks for item in parser.feed(chunk)]
    return items + parser.finish()


def completed(path: str, content: str, *, closed: bool = True) -> FileCompleted:
    raw = content.encode()
    return FileCompleted(path, content, len(raw), hashlib.sha256(raw).hexdigest(), closed)


def file_items(path: str, content: str) -> list[Item]:
    """A whole file fed at once: started, one delta (when not empty), completed."""
    delta: list[Item] = [FileDelta(path, content, 1)] if content else []
    return [FileStarted(path), *delta, completed(path, content)]


LONG_PATH = "a" * 300
LONG_LINE = '<file path="' + "a" * MAX_TAG_LINE + '">\n'

CASES = [
    pytest.param(["hello\nworld"], [TextDelta("hello\nworld")], id="text-only"),
    pytest.param(
        ['Intro.\n<file path="README.md">\n# Title\ncontent lines...\n</file>\nBye.\n'],
        [
            TextDelta("Intro.\n"),
            *file_items("README.md", "# Title\ncontent lines...\n"),
            TextDelta("Bye.\n"),
        ],
        id="spec-example",
    ),
    pytest.param(
        ["intro\n<fi", 'le path="a.', 'txt">\nbody\n</fi', "le>\nbye"],
        [
            TextDelta("intro\n"),
            FileStarted("a.txt"),
            FileDelta("a.txt", "body\n", 1),
            completed("a.txt", "body\n"),
            TextDelta("bye"),
        ],
        id="tag-split-across-chunks",
    ),
    pytest.param(
        list('a\n<file path="f">\nb\n</file>\n'),
        [
            TextDelta("a"),
            TextDelta("\n"),
            FileStarted("f"),
            FileDelta("f", "b", 1),
            FileDelta("f", "\n", 1),
            completed("f", "b\n"),
        ],
        id="one-char-chunks",
    ),
    pytest.param(
        ['hi\r\n<file path="a.txt">\r\nx\r\ny\r\n</file>\r\nbye\r\n'],
        [TextDelta("hi\r\n"), *file_items("a.txt", "x\r\ny\r\n"), TextDelta("bye\r\n")],
        id="crlf",
    ),
    pytest.param(
        ['<file path="a">\r', "\nx\n</file>\r", "\n"],
        [FileStarted("a"), FileDelta("a", "x\n", 1), completed("a", "x\n")],
        id="crlf-split-between-cr-and-lf",
    ),
    pytest.param(
        ['<file path="a">\n</file>\rtail\n</file>\n'],
        file_items("a", "</file>\rtail\n"),
        id="lone-cr-is-not-a-line-break",
    ),
    pytest.param(
        ['<file path="a.py">\nprint(1)\n'],
        [
            FileStarted("a.py"),
            FileDelta("a.py", "print(1)\n", 1),
            completed("a.py", "print(1)\n", closed=False),
        ],
        id="unclosed-file",
    ),
    pytest.param(
        ['<file path="a.py">\nx = 1'],
        [
            FileStarted("a.py"),
            FileDelta("a.py", "x = 1", 1),
            completed("a.py", "x = 1", closed=False),
        ],
        id="unclosed-file-last-line-without-newline",
    ),
    pytest.param(
        ['<file path="a">\nx\n</file>'],
        file_items("a", "x\n"),
        id="close-tag-at-end-of-stream-without-newline",
    ),
    pytest.param(
        ['<file path="a">\nx\n</file>\nThanks!'],
        [*file_items("a", "x\n"), TextDelta("Thanks!")],
        id="text-after-last-file",
    ),
    pytest.param(
        ['Here:\n<file path="../etc/passwd">\nroot:x\n</file>\nDone.\n'],
        [
            TextDelta("Here:\n"),
            FileRejected("../etc/passwd", "'..' segment in path"),
            TextDelta("Done.\n"),
        ],
        id="hostile-path-rejected",
    ),
    pytest.param(
        ['<file path="/abs">\n<file path="ok">\nx\n</file>\nafter\n'],
        [FileRejected("/abs", "absolute path"), TextDelta("after\n")],
        id="rejected-file-swallows-an-opening-tag-inside-it",
    ),
    pytest.param(
        [f'<file path="{LONG_PATH}">\nx\n</file>\n'],
        [FileRejected(LONG_PATH, "path longer than 255 characters")],
        id="too-long-path-rejected",
    ),
    pytest.param([LONG_LINE], [TextDelta(LONG_LINE)], id="line-longer-than-any-tag-is-text"),
    pytest.param(
        ['<file path="a.md">\n<file path="b.md">\nx\n</file>\n</file>\n'],
        [*file_items("a.md", '<file path="b.md">\nx\n'), TextDelta("</file>\n")],
        id="nested-looking-tag-is-content",
    ),
    pytest.param(["</file>\n"], [TextDelta("</file>\n")], id="closing-tag-in-chat-is-text"),
    pytest.param(
        ["<file path=README.md>\n<file>\n<file path='a'>\n"],
        [TextDelta("<file path=README.md>\n<file>\n<file path='a'>\n")],
        id="malformed-open-tag-is-text",
    ),
    pytest.param(
        ['<file path="a"> x\n'], [TextDelta('<file path="a"> x\n')], id="tag-with-text-after"
    ),
    pytest.param(
        [' \t<file path="a">  \nx\n\t</file> \n'],
        file_items("a", "x\n"),
        id="tags-with-surrounding-whitespace",
    ),
    pytest.param(['<file path="e">\n</file>\n'], file_items("e", ""), id="empty-file"),
    pytest.param(
        ['<file path="./src/a.py">\nx\n</file>\n'],
        file_items("src/a.py", "x\n"),
        id="dot-slash-prefix-dropped",
    ),
    pytest.param(
        ['<file path="a">\n1\n</file>\n<file path="a">\n2\n</file>\n'],
        [*file_items("a", "1\n"), *file_items("a", "2\n")],
        id="same-path-twice",
    ),
    pytest.param(
        ['<file path="f">\na\nb\n', "c\n", "d"],
        [
            FileStarted("f"),
            FileDelta("f", "a\nb\n", 1),
            FileDelta("f", "c\n", 3),
            FileDelta("f", "d", 4),
            completed("f", "a\nb\nc\nd", closed=False),
        ],
        id="delta-line-numbers",
    ),
]


@pytest.mark.parametrize(("chunks", "expected"), CASES)
def test_parse(chunks: list[str], expected: list[Item]) -> None:
    assert parse(chunks) == expected


@pytest.mark.parametrize(
    ("before", "chunk", "expected"),
    [
        pytest.param("", "Hello wor", [TextDelta("Hello wor")], id="plain-text-at-once"),
        pytest.param("", " \t<fi", [], id="possible-open-tag-held"),
        pytest.param("", "<div>", [TextDelta("<div>")], id="other-markup-at-once"),
        pytest.param("", "</fi", [TextDelta("</fi")], id="closing-tag-in-chat-at-once"),
        pytest.param('<file path="a">\n', "    ", [], id="indentation-held"),
        pytest.param('<file path="a">\n', "    x", [FileDelta("a", "    x", 1)], id="code"),
        pytest.param('<file path="a">\n', "</fi", [], id="possible-close-tag-held"),
        pytest.param(
            '<file path="a">\n', "<fi", [FileDelta("a", "<fi", 1)], id="open-tag-in-file-at-once"
        ),
    ],
)
def test_feed_holds_back_only_a_line_that_could_become_a_tag(
    before: str, chunk: str, expected: list[Item]
) -> None:
    parser = OutputParser()
    parser.feed(before)
    assert parser.feed(chunk) == expected


def test_held_line_is_released_once_it_cannot_be_a_tag() -> None:
    parser = OutputParser()
    assert parser.feed("  <fi") == []
    assert parser.feed("gure>") == [TextDelta("  <figure>")]


def test_text_property_joins_the_chat_text() -> None:
    parser = OutputParser()
    parser.feed('one\n<file path="a">\nx\n</file>\ntw')
    parser.feed("o")
    assert parser.text == "one\ntwo"
    parser.finish()
    assert parser.text == "one\ntwo"


def test_feed_after_finish_is_an_error() -> None:
    parser = OutputParser()
    parser.finish()
    with pytest.raises(RuntimeError):
        parser.feed("late")


# --- properties: any chunking of a document parses like the whole document ---


@dataclass
class Parsed:
    text: str = ""
    started: list[str] = field(default_factory=list)
    files: list[tuple[str, str, bool]] = field(default_factory=list)
    rejected: list[str] = field(default_factory=list)


@dataclass
class Document:
    source: str
    expected: Parsed


def summarize(items: list[Item]) -> Parsed:
    """Join the items, checking as it goes what must hold for any chunking."""
    parsed = Parsed()
    text: list[str] = []
    content: list[str] = []
    for item in items:
        if isinstance(item, TextDelta):
            assert item.text
            text.append(item.text)
        elif isinstance(item, FileStarted):
            parsed.started.append(item.path)
            content = []
        elif isinstance(item, FileDelta):
            assert item.text
            assert item.path == parsed.started[-1]
            assert item.line == 1 + "".join(content).count("\n")
            content.append(item.text)
        elif isinstance(item, FileCompleted):
            assert item.path == parsed.started[-1]
            assert item.content == "".join(content)
            assert item.size == len(item.content.encode())
            parsed.files.append((item.path, item.content, item.closed))
        else:
            parsed.rejected.append(item.path)
    parsed.text = "".join(text)
    return parsed


def parse_summary(chunks: list[str]) -> Parsed:
    parser = OutputParser()
    items = [item for chunk in chunks for item in parser.feed(chunk)]
    items += parser.finish()
    parsed = summarize(items)
    assert parser.text == parsed.text
    return parsed


def is_tag_line(line: str, *, closing: bool) -> bool:
    """An oracle written apart from the parser's regexes, from the format's definition."""
    body = line.removesuffix("\n").removesuffix("\r").strip(" \t")
    if closing:
        return body == "</file>"
    return re.fullmatch(r'<file path="[^"]*">', body) is not None


# Pieces a line is made of: chosen to come close to tags without always being one.
FRAGMENTS = ["<", "</", "</file", "</file>", '<file path="', '">', "file", '"', ">", " ", "\t"]
line_bodies = st.lists(
    st.sampled_from(FRAGMENTS) | st.text(alphabet="ab\ré😀漢", max_size=3), max_size=6
).map("".join)


def _is_safe(path: str) -> bool:
    try:
        return check_path(path) == path
    except UnsafePath:
        return False


segments = st.text(alphabet="abcXYZ019_.-", min_size=1, max_size=8)
safe_paths = st.lists(segments, min_size=1, max_size=3).map("/".join).filter(_is_safe)
hostile_paths = st.sampled_from(["../x", "/etc/passwd", "a//b", "C:x", "a\\b", " a", "CON", ""])
spaces = st.sampled_from(["", " ", "\t", " \t "])
line_breaks = st.sampled_from(["\n", "\r\n"])


def _lines(draw: st.DrawFn, *, closing: bool, last_break: bool = True) -> str:
    """Lines that are not the tag that would mean something where they are."""
    lines = draw(st.lists(line_bodies, max_size=4))
    lines = [body + ("x" if is_tag_line(body, closing=closing) else "") for body in lines]
    joined = "".join(body + "\n" for body in lines)
    return joined if last_break else joined.removesuffix("\n")


@st.composite
def documents(draw: st.DrawFn) -> Document:
    source: list[str] = []
    expected = Parsed()
    text: list[str] = []
    for _ in range(draw(st.integers(0, 4))):
        chat = _lines(draw, closing=False)
        rejected = draw(st.integers(0, 4)) == 0
        path = draw(hostile_paths if rejected else safe_paths)
        content = _lines(draw, closing=True)
        opening = f'{draw(spaces)}<file path="{path}">{draw(spaces)}{draw(line_breaks)}'
        closing = f"{draw(spaces)}</file>{draw(spaces)}{draw(line_breaks)}"
        source += [chat, opening, content, closing]
        text.append(chat)
        if rejected:
            expected.rejected.append(path)
        else:
            expected.started.append(path)
            expected.files.append((path, content, True))
    if draw(st.booleans()):
        path = draw(safe_paths)
        content = _lines(draw, closing=True, last_break=draw(st.booleans()))
        source += [f'<file path="{path}">\n', content]
        expected.started.append(path)
        expected.files.append((path, content, False))
    else:
        tail = _lines(draw, closing=False, last_break=draw(st.booleans()))
        source.append(tail)
        text.append(tail)
    expected.text = "".join(text)
    return Document("".join(source), expected)


@PROPERTY_SETTINGS
@given(documents(), st.data())
def test_any_chunking_parses_like_the_whole_document(
    document: Document, data: st.DataObject
) -> None:
    # One test for every chunking, so each generated document is paid for once.
    source = document.source
    assert parse_summary([source]) == document.expected, "whole"
    assert parse_summary(list(source)) == document.expected, "one character at a time"
    for cut in range(len(source) + 1):
        assert parse_summary([source[:cut], source[cut:]]) == document.expected, f"cut at {cut}"
    cuts = sorted(data.draw(st.lists(st.integers(0, len(source)), max_size=20), label="cuts"))
    chunks = [
        source[start:end] for start, end in zip([0, *cuts], [*cuts, len(source)], strict=True)
    ]
    assert parse_summary(chunks) == document.expected, "random cuts"
