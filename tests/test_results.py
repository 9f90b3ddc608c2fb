"""
L{mcpgateway.mcp.results.result_text}: a C{CallToolResult} as one string.
"""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest

from mcpgateway.mcp.results import result_text


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def test_text_blocks_joined_by_newlines() -> None:
    result = {"content": [{"type": "text", "text": "one"}, {"type": "text", "text": "two\nthree"}]}
    assert result_text(result) == "one\ntwo\nthree"


def test_empty_text_blocks_are_left_out() -> None:
    result = {"content": [{"type": "text", "text": "a"}, {"type": "text", "text": ""}, {"type": "text", "text": "b"}]}
    assert result_text(result) == "a\nb"


def test_text_block_without_string_text() -> None:
    result = {"content": [{"type": "text", "text": 5}, {"type": "text"}, {"type": "text", "text": "ok"}]}
    assert result_text(result) == "ok"


def test_image_summary() -> None:
    result = {"content": [{"type": "image", "mimeType": "image/png", "data": b64(b"\x89PNG" + b"\0" * 96)}]}
    assert result_text(result) == "[image image/png 100 bytes]"


def test_audio_summary() -> None:
    result = {"content": [{"type": "audio", "mimeType": "audio/wav", "data": b64(b"RIFF1234567")}]}
    assert result_text(result) == "[audio audio/wav 11 bytes]"


def test_image_without_mime_type() -> None:
    assert result_text({"content": [{"type": "image", "data": b64(b"abc")}]}) == "[image unknown type 3 bytes]"


def test_image_with_undecodable_data() -> None:
    result = {"content": [{"type": "image", "mimeType": "image/gif", "data": "abcde"}]}
    assert result_text(result) == "[image image/gif 5 base64 characters]"


def test_image_without_data() -> None:
    result = {"content": [{"type": "image", "mimeType": "image/gif"}]}
    assert result_text(result) == "[image image/gif ? bytes]"


def test_mixed_blocks_keep_their_order() -> None:
    result = {
        "content": [
            {"type": "text", "text": "Here it is:"},
            {"type": "image", "mimeType": "image/jpeg", "data": b64(b"x" * 1234)},
            {"type": "text", "text": "done"},
        ]
    }
    assert result_text(result) == "Here it is:\n[image image/jpeg 1234 bytes]\ndone"


def test_resource_link() -> None:
    result = {"content": [{"type": "resource_link", "uri": "file:///a.txt", "name": "a.txt"}]}
    assert result_text(result) == "[resource link file:///a.txt a.txt]"


def test_resource_link_title_and_no_name() -> None:
    assert result_text({"content": [{"type": "resource_link", "uri": "u:1", "title": "T"}]}) == "[resource link u:1 T]"
    assert result_text({"content": [{"type": "resource_link", "uri": "u:2"}]}) == "[resource link u:2]"


def test_embedded_resource_with_text() -> None:
    result = {"content": [{"type": "resource", "resource": {"uri": "file:///n.md", "text": "# notes"}}]}
    assert result_text(result) == "# notes"


def test_embedded_resource_with_blob() -> None:
    resource = {"uri": "file:///x.bin", "mimeType": "application/octet-stream", "blob": b64(b"\0" * 42)}
    result = {"content": [{"type": "resource", "resource": resource}]}
    assert result_text(result) == "[resource file:///x.bin application/octet-stream 42 bytes]"


def test_embedded_resource_not_an_object() -> None:
    assert result_text({"content": [{"type": "resource", "resource": "nope"}]}) == "[resource]"


def test_unknown_block_type() -> None:
    assert result_text({"content": [{"type": "video", "url": "x"}]}) == "[video content]"


@pytest.mark.parametrize("block", ["text", 3, None, ["type", "text"]])
def test_non_dict_blocks(block: Any) -> None:
    result = {"content": [block, {"type": "text", "text": "after"}]}
    assert result_text(result) == "[unreadable content block]\nafter"


def test_empty_content_with_structured_content_is_json() -> None:
    result = {"content": [], "structuredContent": {"temp": 21.5, "unit": "C", "tags": ["a"]}}
    text = result_text(result)
    assert json.loads(text) == {"temp": 21.5, "unit": "C", "tags": ["a"]}
    assert text == '{"temp":21.5,"unit":"C","tags":["a"]}'


def test_no_content_with_structured_content() -> None:
    assert result_text({"structuredContent": [1, 2]}) == "[1,2]"


def test_text_wins_over_structured_content() -> None:
    result = {"content": [{"type": "text", "text": "21.5 C"}], "structuredContent": {"temp": 21.5}}
    assert result_text(result) == "21.5 C"


def test_only_empty_text_falls_back_to_structured_content() -> None:
    result = {"content": [{"type": "text", "text": ""}], "structuredContent": {"ok": True}}
    assert result_text(result) == '{"ok":true}'


@pytest.mark.parametrize("content", ["a string", {"type": "text", "text": "x"}, 7, None])
def test_content_not_a_list(content: Any) -> None:
    assert result_text({"content": content}) == ""
    assert result_text({"content": content, "structuredContent": {"a": 1}}) == '{"a":1}'


def test_nothing_at_all() -> None:
    assert result_text({}) == ""
    assert result_text({"content": []}) == ""
