"""
L{mcpgateway.mcp.framing.LineBuffer}: NDJSON framing whatever the chunking.
"""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mcpgateway.mcp.framing import LineBuffer, LineTooLong

# A line: no newline, and something left once trailing CRs are dropped.
lines_strategy = st.lists(
    st.binary(min_size=1, max_size=40).map(lambda b: b.replace(b"\n", b"x")).filter(lambda b: bool(b.rstrip(b"\r"))),
    max_size=30,
)


def feed_chunks(buffer: LineBuffer, stream: bytes, cuts: list[int]) -> list[bytes]:
    """
    Feed C{stream} cut at the (sorted, deduplicated) positions C{cuts}.
    """
    out: list[bytes] = []
    start = 0
    for cut in sorted({c for c in cuts if 0 < c < len(stream)}):
        out += buffer.feed(stream[start:cut])
        start = cut
    out += buffer.feed(stream[start:])
    return out


@given(lines=lines_strategy, cuts=st.lists(st.integers(min_value=0, max_value=2000), max_size=50))
def test_any_chunking_yields_the_lines(lines: list[bytes], cuts: list[int]) -> None:
    stream = b"".join(line + b"\n" for line in lines)
    buffer = LineBuffer(max_line=64)
    assert feed_chunks(buffer, stream, cuts) == [line.rstrip(b"\r") for line in lines]
    assert buffer.pending == 0


@given(lines=lines_strategy, cuts=st.lists(st.integers(min_value=0, max_value=2000), max_size=50))
def test_any_chunking_with_crlf(lines: list[bytes], cuts: list[int]) -> None:
    stream = b"".join(line + b"\r\n" for line in lines)
    buffer = LineBuffer(max_line=64)
    assert feed_chunks(buffer, stream, cuts) == [line.rstrip(b"\r") for line in lines]


@given(data=st.binary(max_size=300), cuts=st.lists(st.integers(min_value=0, max_value=300), max_size=30))
def test_chunking_never_changes_the_result(data: bytes, cuts: list[int]) -> None:
    whole = LineBuffer(max_line=1000).feed(data)
    assert feed_chunks(LineBuffer(max_line=1000), data, cuts) == whole


def test_one_byte_at_a_time() -> None:
    buffer = LineBuffer(max_line=100)
    out: list[bytes] = []
    for byte in b'{"a":1}\r\n{"b":2}\n':
        out += buffer.feed(bytes([byte]))
    assert out == [b'{"a":1}', b'{"b":2}']


def test_crlf_is_dropped() -> None:
    assert LineBuffer(100).feed(b"one\r\ntwo\r\n") == [b"one", b"two"]


def test_inner_cr_is_kept() -> None:
    assert LineBuffer(100).feed(b"a\rb\n") == [b"a\rb"]


def test_empty_lines_are_skipped() -> None:
    assert LineBuffer(100).feed(b"\n\none\n\r\n\n\r\r\ntwo\n\n") == [b"one", b"two"]


def test_partial_line_is_kept_until_its_newline() -> None:
    buffer = LineBuffer(100)
    assert buffer.feed(b"first\nsec") == [b"first"]
    assert buffer.pending == 3
    assert buffer.feed(b"ond") == []
    assert buffer.pending == 6
    assert buffer.feed(b"\n") == [b"second"]
    assert buffer.pending == 0


def test_too_long_complete_line() -> None:
    buffer = LineBuffer(max_line=10)
    with pytest.raises(LineTooLong) as info:
        buffer.feed(b"x" * 11 + b"\n")
    assert info.value.limit == 10
    assert info.value.length == 11
    assert "10 bytes" in str(info.value)


def test_too_long_line_after_good_lines() -> None:
    buffer = LineBuffer(max_line=10)
    assert buffer.feed(b"ok\n") == [b"ok"]
    with pytest.raises(LineTooLong):
        buffer.feed(b"fine\n" + b"y" * 20 + b"\nmore\n")


def test_too_long_partial_line() -> None:
    buffer = LineBuffer(max_line=10)
    assert buffer.feed(b"x" * 10) == []
    with pytest.raises(LineTooLong) as info:
        buffer.feed(b"x")
    assert info.value.length == 11
    assert info.value.limit == 10


def test_too_long_partial_line_in_one_chunk() -> None:
    with pytest.raises(LineTooLong):
        LineBuffer(max_line=10).feed(b"ok\n" + b"z" * 11)


def test_exact_limit_lines_are_accepted() -> None:
    buffer = LineBuffer(max_line=10)
    assert buffer.feed(b"a" * 10 + b"\n" + b"b" * 10 + b"\n") == [b"a" * 10, b"b" * 10]


def test_exact_limit_partial_line_is_accepted() -> None:
    buffer = LineBuffer(max_line=10)
    assert buffer.feed(b"c" * 10) == []
    assert buffer.pending == 10
    assert buffer.feed(b"\n") == [b"c" * 10]


def test_large_line_in_many_chunks() -> None:
    buffer = LineBuffer(max_line=1 << 20)
    chunk = b"q" * 4096
    out: list[bytes] = []
    for _ in range(256):
        out += buffer.feed(chunk)
    out += buffer.feed(b"\n")
    assert out == [chunk * 256]
