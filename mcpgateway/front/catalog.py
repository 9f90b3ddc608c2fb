"""
How the aggregate endpoint names what its services offer: a tool (or
prompt) C{t} of service C{s} is C{s.t}; service names are C{[A-Za-z0-9_-]},
so the first dot always ends the service name.  Names longer than 64
characters are shortened deterministically (C{<first 55 characters>-<8 hex
digits of a SHA-256>}) and collisions are resolved by re-hashing; such names
are resolved through the catalogue.  Resources get the URI
C{mcpgw://<service>/<original URI>}.  On a single-service endpoint every
name and URI is the child's own.

Also the gateway's own pagination of the lists it gathers (opaque cursors).
"""

from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass
from typing import Any

from mcpgateway.front.errors import McpError
from mcpgateway.mcp.spec import INVALID_PARAMS
from mcpgateway.observe.logs import logger

__all__ = [
    "MAX_NAME",
    "MAX_PAGES",
    "RESOURCE_PREFIX",
    "SEPARATOR",
    "Entry",
    "build_catalog",
    "page",
    "prefix_uri",
    "public_name",
]

log = logger("mcpgateway.front")

SEPARATOR = "."
MAX_NAME = 64
_HASH_DIGITS = 8
RESOURCE_PREFIX = "mcpgw://"
#: At most this many pages are read from a child, and re-hashes tried.
MAX_PAGES = 100


def public_name(service: str, name: str, attempt: int = 0) -> str:
    """
    The name a tool or prompt of C{service} has on the aggregate endpoint.

    @param attempt: 0 normally; higher values give other shortened names, to
        resolve collisions.
    @return: C{service.name} when at most 64 characters (and C{attempt} is 0),
        else 64 characters: a prefix of it, C{-}, and 8 hex digits of a hash.
    """
    full = f"{service}{SEPARATOR}{name}"
    if attempt == 0 and len(full) <= MAX_NAME:
        return full
    digest = hashlib.sha256(f"{service}\0{name}\0{attempt}".encode()).hexdigest()[:_HASH_DIGITS]
    return f"{full[: MAX_NAME - _HASH_DIGITS - 1]}-{digest}"


@dataclass(frozen=True)
class Entry:
    """
    One tool or prompt as the client sees it.

    @ivar public: Its name for the client.
    @ivar service: The service offering it.
    @ivar name: Its name in the child.
    @ivar item: The child's description of it.
    """

    public: str
    service: str
    name: str
    item: dict[str, Any]

    def view(self) -> dict[str, Any]:
        """
        @return: The description with the public name.
        """
        return self.item if self.public == self.name else {**self.item, "name": self.public}


def build_catalog(listing: list[tuple[str, list[dict[str, Any]]]], *, scoped: bool) -> list[Entry]:
    """
    Name every item of every service, in listing order.

    Items without a string name and repeated names are skipped.  On the
    aggregate endpoint, names that need shortening are settled after all
    the others (in sorted order), re-hashed until unique.

    @param listing: Each service's items (tools or prompts).
    @param scoped: Whether the endpoint shows one service (names unchanged).
    @return: The entries.
    """
    entries: dict[tuple[str, str], Entry] = {}
    taken: set[str] = set()
    seen: set[tuple[str, str]] = set()
    order: list[tuple[str, str, dict[str, Any]]] = []
    long: list[tuple[str, str, dict[str, Any]]] = []
    for service, items in listing:
        for item in items:
            name = item.get("name")
            if not isinstance(name, str) or not name or (service, name) in seen:
                continue
            seen.add((service, name))
            order.append((service, name, item))
            public = name if scoped else public_name(service, name)
            if scoped or public == f"{service}{SEPARATOR}{name}":
                if public in taken:
                    continue
                taken.add(public)
                entries[(service, name)] = Entry(public, service, name, item)
            else:
                long.append((service, name, item))
    for service, name, item in sorted(long, key=lambda entry: (entry[0], entry[1])):
        for attempt in range(MAX_PAGES):
            public = public_name(service, name, attempt)
            if public not in taken:
                break
            log.warn(
                "{service}: name {name!r} collides as {public!r}; rehashing", service=service, name=name, public=public
            )
        else:
            continue
        taken.add(public)
        entries[(service, name)] = Entry(public, service, name, item)
    return [entries[(service, name)] for service, name, _ in order if (service, name) in entries]


def prefix_uri(service: str, uri: str) -> str:
    """
    @return: The aggregate endpoint's URI for C{uri} of C{service}.
    """
    return f"{RESOURCE_PREFIX}{service}/{uri}"


def _encode_cursor(offset: int) -> str:
    return base64.urlsafe_b64encode(f"mcpgw:{offset}".encode()).decode().rstrip("=")


def decode_cursor(cursor: Any) -> int:
    if cursor is None:
        return 0
    try:
        text = base64.urlsafe_b64decode(str(cursor) + "=" * (-len(str(cursor)) % 4)).decode()
        kind, _, number = text.partition(":")
        offset = int(number)
    except ValueError:
        offset = -1
        kind = ""
    if kind != "mcpgw" or offset < 0:
        raise McpError(INVALID_PARAMS, f"invalid cursor: {cursor!r}")
    return offset


def page(items: list[dict[str, Any]], params: dict[str, Any], key: str, size: int) -> dict[str, Any]:
    """
    One page of C{items}, from the client's C{params.cursor}.

    @param key: The result member that holds them, e.g. C{"tools"}.
    @param size: Items per page.
    @return: The result, with C{nextCursor} if more follow.
    @raise McpError: For a cursor the gateway did not make.
    """
    offset = decode_cursor(params.get("cursor"))
    end = offset + size
    result: dict[str, Any] = {key: items[offset:end]}
    if end < len(items):
        result["nextCursor"] = _encode_cursor(end)
    return result
