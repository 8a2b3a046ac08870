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
        pytest.param(".gitignore", ".gitignore", id="gitignore"),
        pytest.param("a/.gitattributes", "a/.gitattributes", id="gitattributes"),
        pytest.param("git/x.py", "git/x.py", id="git-without-dot"),
        pytest.param("repo.git/x", "repo.git/x", id="dot-git-suffix"),
        pytest.param("smile\U0001f600.txt", "smile\U0001f600.txt", id="astral-character"),
        pytest.param("שלום/مرحبا.txt", "שלום/مرحبا.txt", id="right-to-left-letters"),
        pytest.param("日本語.md", "日本語.md", id="cjk"),
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
        # git runs what .git holds: `.git/hooks/pre-commit` written by `--out .` into a
        # repository runs at the next commit. NTFS drops trailing dots and spaces and
        # answers to the 8.3 name GIT~1 (git's own verify_path, CVE-2014-9390).
        pytest.param(".git/hooks/pre-commit", "names the .git directory", id="dot-git"),
        pytest.param("src/.git/config", "names the .git directory", id="dot-git-nested"),
        pytest.param(".GIT/config", "names the .git directory", id="dot-git-upper"),
        pytest.param(".Git", "names the .git directory", id="dot-git-as-file"),
        pytest.param(".git./hooks/x", "names the .git directory", id="dot-git-trailing-dot"),
        pytest.param("git~1/hooks/x", "names the .git directory", id="dot-git-short-name"),
        # Trojan Source (CVE-2021-42574): U+202E shows `txt.exe` as `exe.txt`.
        pytest.param("evil\u202etxt.exe", "bidirectional control U+202E", id="bidi-rlo"),
        pytest.param("a\u202ab", "bidirectional control U+202A", id="bidi-lre"),
        pytest.param("a\u2066b", "bidirectional control U+2066", id="bidi-lri"),
        pytest.param("a\u2069b", "bidirectional control U+2069", id="bidi-pdi"),
        pytest.param("a\u200eb", "bidirectional control U+200E", id="bidi-lrm"),
        pytest.param("a\u200fb", "bidirectional control U+200F", id="bidi-rlm"),
        pytest.param("a\u061cb", "bidirectional control U+061C", id="bidi-alm"),
        pytest.param("a\u200bb.py", "U+200B", id="zero-width-space"),
        pytest.param("a\u200db.py", "U+200D", id="zero-width-joiner"),
        pytest.param("\ufeffa.py", "U+FEFF", id="byte-order-mark"),
        pytest.param("a\u00adb.py", "U+00AD", id="soft-hyphen"),
        pytest.param(".g\u200cit/config", "U+200C", id="dot-git-with-zero-width"),
        pytest.param("a\u2028b", "U+2028", id="line-separator"),
        pytest.param("a\u2029b", "U+2029", id="paragraph-separator"),
        pytest.param("s\ud800.txt", "surrogate U+D800", id="lone-high-surrogate"),
        pytest.param("s\udc00.txt", "surrogate U+DC00", id="lone-low-surrogate"),
        pytest.param("s\ufffd.txt", "U+FFFD", id="replacement-character"),
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


# Names around the character: letters, digits and `/`, so nothing else is refused.
_names = st.text(st.sampled_from("ab1._/"), min_size=1, max_size=10).map(lambda s: f"x{s}x")


@settings(max_examples=300, deadline=None)
@given(
    _names,
    st.characters(categories=["Cc", "Cf", "Cs", "Zl", "Zp"]),
    _names,
)
def test_a_path_holding_a_hidden_or_invalid_character_is_refused(
    before: str, char: str, after: str
) -> None:
    with pytest.raises(UnsafePath, match=f"U\\+{ord(char):04X}"):
        check_path(before + char + after)
