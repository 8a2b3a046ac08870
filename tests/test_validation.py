"""The validating stage's checks on untrusted files: a verdict for every file, never a crash."""

from __future__ import annotations

import pytest

from service.files import FileRecord
from service.generation.validation import check_file


@pytest.mark.parametrize(
    ("path", "content", "check", "ok"),
    [
        pytest.param("a.json", '{"a": [1, 2]}', "json", True, id="json-ok"),
        pytest.param("a.json", '{"a": ', "json", False, id="json-broken"),
        pytest.param("pyproject.toml", 'name = "x"\n', "toml", True, id="toml-ok"),
        pytest.param("a.toml", "name = \n", "toml", False, id="toml-broken"),
        pytest.param("m.py", "def f():\n    return 1\n", "python", True, id="python-ok"),
        pytest.param("m.py", "def f(:\n", "python", False, id="python-broken"),
        pytest.param("deep.json", "[" * 100_000, "json", False, id="json-nested-too-deep"),
        pytest.param("deep.toml", "a = " + "[" * 100_000, "toml", False, id="toml-nested-too-deep"),
        pytest.param(
            "deep.py", "x = " + "(" * 100_000, "python", False, id="python-nested-too-deep"
        ),
        pytest.param("neg.py", "-" * 1_000_000 + "1\n", "python", False, id="python-huge-unary"),
    ],
)
def test_check_gives_a_verdict(path: str, content: str, check: str, ok: bool) -> None:
    result = check_file(FileRecord.of(path, content))
    assert result is not None
    assert (result.path, result.check, result.ok) == (path, check, ok)
    assert result.detail


def test_a_type_the_standard_library_cannot_read_is_not_checked() -> None:
    assert check_file(FileRecord.of("index.html", "<p>")) is None
