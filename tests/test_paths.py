from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from service.paths import MAX_PATH_LENGTH, MAX_SEGMENT_LENGTH, UnsafePath, check_path


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        pytest.param("README.md", "README.md", id="plain-file"),
        pytest.param("src/app/main.py", "src/app/main.py", id="nested"),
        pytest.param("./src/app.py", "src/app.py", id="dot-slash-prefix-dropped"),
        pytest.param("././a", "a", id="repeated-dot-slash-prefix-dropped"),
        pytest.param(".github/workflows/ci.yml", ".github/workflows/ci.yml", id="dotfile-dir"),
        pytest.param("a b/c d.txt", "a b/c d.txt", id="inner-spaces"),
        pytest.param("docs/café.md", "docs/café.md", id="unicode"),
        pytest.param("a..b/c", "a..b/c", id="dots-inside-a-name"),
        pytest.param("console.py", "console.py", id="reserved-name-as-prefix-only"),
        pytest.param("a" * MAX_SEGMENT_LENGTH, "a" * MAX_SEGMENT_LENGTH, id="longest-segment"),
    ],
)
def test_check_path_accepts(raw: str, expected: str) -> None:
    assert check_path(raw) == expected


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        pytest.param("", "empty path", id="empty"),
        pytest.param("./", "empty path", id="only-dot-slash"),
        pytest.param("/etc/passwd", "absolute path", id="absolute"),
        pytest.param("C:x", "drive letter", id="drive-relative"),
        pytest.param("c:\\x", "backslash", id="drive-absolute-backslash"),
        pytest.param("./C:/x", "drive letter", id="drive-after-dot-slash"),
        pytest.param("a\\b", "backslash", id="backslash"),
        pytest.param("../x", "'..' segment", id="dotdot-first"),
        pytest.param("a/../../x", "'..' segment", id="dotdot-inside"),
        pytest.param("a/./b", "'.' segment", id="dot-inside"),
        pytest.param("a/.", "'.' segment", id="dot-last"),
        pytest.param("a//b", "empty segment", id="empty-segment"),
        pytest.param("a/", "empty segment", id="trailing-slash"),
        pytest.param("a\x00b", "U+0000", id="nul"),
        pytest.param("a\nb", "U+000A", id="newline"),
        pytest.param("a\x7fb", "U+007F", id="del"),
        pytest.param("a\x85b", "U+0085", id="c1-control"),
        pytest.param(" a.py", "whitespace", id="leading-space"),
        pytest.param("src /a.py", "whitespace", id="trailing-space-in-dir"),
        pytest.param("a.py\u3000", "whitespace", id="trailing-unicode-space"),
        pytest.param("CON", "reserved", id="reserved-con"),
        pytest.param("src/nul.txt", "reserved", id="reserved-with-extension"),
        pytest.param("lpt9.log", "reserved", id="reserved-lpt9"),
        pytest.param("a" * (MAX_SEGMENT_LENGTH + 1), "segment longer", id="segment-too-long"),
        pytest.param("a/" * 127 + "ab", "path longer", id="path-too-long"),
    ],
)
def test_check_path_refuses(raw: str, reason: str) -> None:
    with pytest.raises(UnsafePath, match=re.escape(reason)):
        check_path(raw)


def test_unsafe_path_is_a_value_error() -> None:
    assert issubclass(UnsafePath, ValueError)


def test_longest_path_is_accepted() -> None:
    path = "a/" * 126 + "abc"
    assert len(path) == MAX_PATH_LENGTH
    assert check_path(path) == path


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=40))
def test_check_path_either_refuses_or_returns_a_stable_relative_path(raw: str) -> None:
    try:
        path = check_path(raw)
    except UnsafePath:
        return
    assert check_path(path) == path
    assert raw.endswith(path)  # the only rewrite is dropping a `./` prefix
    assert not path.startswith("/")
    assert ".." not in path.split("/")
