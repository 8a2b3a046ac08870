"""A model's JSON reply read as untrusted (service/pipelines/replies.py): strict JSON, one
object, nothing around it but white space or the one code block it is the whole of."""

from __future__ import annotations

import pytest

from service.generation.providers.base import ProviderError
from service.pipelines.replies import parse_object

pytestmark = pytest.mark.sqlite_only("parsing a reply touches no storage")


@pytest.mark.parametrize(
    "text",
    [
        '{"tool": "add"}',
        '  {"tool": "add"}\n',
        '```json\n{"tool": "add"}\n```',
        '```\n{"tool": "add"}\n```\n',
        '\n```json  \n{"tool":\n "add"}\n  ```  ',
    ],
)
def test_a_reply_that_is_one_object_or_one_code_block_of_it_is_read(text: str) -> None:
    assert parse_object(text, "the choice") == {"tool": "add"}


@pytest.mark.parametrize(
    ("text", "detail"),
    [
        ('Sure:\n```json\n{"tool": "add"}\n```', "is not JSON"),
        ('```json\n{"tool": "add"}\n```\nDone.', "is not JSON"),
        ('```json\n{"tool": "add"}\n```\n```json\n{"tool": "edit"}\n```', "is not JSON"),
        ('```python\n{"tool": "add"}\n```', "is not JSON"),
        ('```json {"tool": "add"} ```', "is not JSON"),
        ('```json\n["add"]\n```', "list, not a JSON object"),
        ('{"tool": "add", "tool": "edit"}', "repeated"),
        ('{"n": NaN}', "NaN is not a JSON value"),
    ],
)
def test_anything_else_is_a_bad_response(text: str, detail: str) -> None:
    with pytest.raises(ProviderError) as failed:
        parse_object(text, "the choice")
    assert failed.value.code == "bad_response"
    assert detail in failed.value.message
