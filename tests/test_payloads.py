"""The stored form of a record (``to_payload``) on its fast path: a flat dict."""

from __future__ import annotations

import json
from typing import Any

import pytest

from ingestkit.sources import from_payload, to_payload


@pytest.mark.parametrize(
    "record",
    [
        {},
        {"id": "1", "n": 2, "ok": True, "gone": None},
        {"text": 'quote " backslash \\ newline \n tab \t', "é": "ünïcode ☃"},
        {"big": 10**30, "neg": -5, "false": False},
    ],
)
def test_flat_dict_payload_is_the_json_text(record: dict[str, Any]) -> None:
    """The cached encoder writes what json.dumps writes, and it reads back."""
    text = to_payload(record)
    assert text == json.dumps(record, ensure_ascii=False, separators=(",", ":"))
    assert from_payload(json.loads(text)) == record


@pytest.mark.parametrize("value", ["a\0b", "lone \ud800 surrogate"])
def test_flat_dict_with_unstorable_text_is_tagged(value: str) -> None:
    """A NUL or a lone surrogate leaves the fast path and still reads back."""
    text = to_payload({"k": value})
    assert "$ingestkit" in text
    assert from_payload(json.loads(text)) == {"k": value}
