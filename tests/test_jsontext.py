"""
L{mcpgateway.lib.jsontext}: strict JSON for bodies that reach a child.
"""

from __future__ import annotations

import json
import threading
from typing import Any

import pytest
import pytest_twisted
from hypothesis import given, settings
from hypothesis import strategies as st

import mcpgateway.lib.jsontext
from mcpgateway.lib.jsontext import MAX_DEPTH, THREAD_BYTES, JSONTextError, dumps, loads, parse


@pytest.mark.parametrize(
    ("data", "words"),
    [
        (b'{"a": 1e400}', "out of range"),
        (b'{"a": -1e400}', "out of range"),
        (b"NaN", "not a JSON number"),
        (b"[Infinity]", "not a JSON number"),
        ('{"a": 1}'.encode("utf-16"), "not UTF-8"),
        (b'{"a": "\xe9"}', "not UTF-8"),
        (b"\xef\xbb\xbf{}", "byte order mark"),
        (b"[" * (MAX_DEPTH + 1) + b"]" * (MAX_DEPTH + 1), f"more than {MAX_DEPTH} levels"),
        (b"[" * 100_000 + b"]" * 100_000, f"more than {MAX_DEPTH} levels"),
        (b"1" + b"0" * 5000, "4300"),
        (b'{"a": ', "Expecting value"),
    ],
)
def test_refused(data: bytes, words: str) -> None:
    with pytest.raises(JSONTextError) as caught:
        loads(data)
    assert words in str(caught.value)


def test_depth_counts_only_brackets_outside_strings() -> None:
    assert loads(b"[" * MAX_DEPTH + b"]" * MAX_DEPTH) is not None
    text = json.dumps({"s": "[" * 500 + '\\"{' * 100, "t": [[["]]]"]]]})
    assert loads(text.encode())["t"] == [[["]]]"]]]


@settings(max_examples=200, deadline=None)
@given(
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
        lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=5), children, max_size=3),
        max_leaves=30,
    )
)
def test_every_finite_json_value_round_trips(value: Any) -> None:
    assert loads(dumps(value).encode()) == value


def test_dumps_refuses_non_finite_numbers() -> None:
    with pytest.raises(ValueError):
        dumps({"x": float("nan")})


def test_small_bodies_parse_on_the_calling_thread() -> None:
    parsed = parse(b'{"a": [1, 2]}')
    box: list[Any] = []
    parsed.addBoth(box.append)
    assert box == [{"a": [1, 2]}], "fired at once, no thread hop"


@pytest_twisted.ensureDeferred
async def test_large_bodies_parse_in_the_thread_pool(monkeypatch: pytest.MonkeyPatch) -> None:
    threads: list[str] = []
    real = mcpgateway.lib.jsontext.loads

    def recording(data: bytes) -> Any:
        threads.append(threading.current_thread().name)
        return real(data)

    monkeypatch.setattr(mcpgateway.lib.jsontext, "loads", recording)
    big = json.dumps({"pad": "x" * THREAD_BYTES}).encode()
    assert (await parse(big))["pad"] == "x" * THREAD_BYTES
    assert threads and threads[0] != threading.main_thread().name
    with pytest.raises(JSONTextError):
        await parse(b"[" + b"1," * THREAD_BYTES + b"NaN]")
    assert len(threads) == 2
