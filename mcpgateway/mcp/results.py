"""
Turn an MCP C{CallToolResult} into the REST API's answer, whose C{result}
is always a string (the SignalWire skill hands exactly that to the LLM).
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any

__all__ = ["result_text"]


def _size(data: object) -> str:
    if not isinstance(data, str):
        return "? bytes"
    try:
        return f"{len(base64.b64decode(data, validate=False))} bytes"
    except (binascii.Error, ValueError):
        return f"{len(data)} base64 characters"


def _block_text(block: object) -> str:
    if not isinstance(block, dict):
        return "[unreadable content block]"
    kind = block.get("type")
    if kind == "text":
        text = block.get("text")
        return text if isinstance(text, str) else ""
    if kind in ("image", "audio"):
        return f"[{kind} {block.get('mimeType', 'unknown type')} {_size(block.get('data'))}]"
    if kind == "resource_link":
        name = block.get("name") or block.get("title") or ""
        return f"[resource link {block.get('uri', '')}{' ' + name if name else ''}]"
    if kind == "resource":
        resource = block.get("resource")
        if isinstance(resource, dict):
            if isinstance(resource.get("text"), str):
                return str(resource["text"])
            return f"[resource {resource.get('uri', '')} {resource.get('mimeType', '')} {_size(resource.get('blob'))}]"
        return "[resource]"
    return f"[{kind} content]"


def result_text(result: dict[str, Any]) -> str:
    """
    All text blocks joined by newlines; other blocks summarised, e.g.
    C{[image image/png 1234 bytes]}.  With no content at all, the structured
    content as JSON.

    @param result: The MCP C{CallToolResult}.
    @return: One string for the LLM.
    """
    content = result.get("content")
    parts = [_block_text(block) for block in content] if isinstance(content, list) else []
    text = "\n".join(part for part in parts if part)
    if not text and "structuredContent" in result:
        return json.dumps(result["structuredContent"], separators=(",", ":"))
    return text
