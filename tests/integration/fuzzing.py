"""Hypothesis strategies the fuzz tests share (test_fuzz_http.py, test_fuzz_nats.py):
any JSON, hostile values, and a valid sample with some of its fields mutated
into them. JSON is written with ``json.dumps(ensure_ascii=True)``, so a lone
surrogate travels as its ``\\udXXX`` escape and NaN/Infinity as the bare words
(not JSON: a client may send them all the same)."""

from __future__ import annotations

import copy
import json
import os
from typing import Any

from hypothesis import strategies as st


def examples(default: int) -> int:
    """How many generated inputs a fuzz test sends: ``default`` in the suite,
    ``TIDINGS_FUZZ_EXAMPLES`` when set (10000 is the issue's full run)."""
    return int(os.environ.get("TIDINGS_FUZZ_EXAMPLES") or default)


SURROGATES = ("\ud800", "\udbff", "\udc00", "\udfff")
HOSTILE_TEXT = (
    "", " ", "\x00", "a\x00b", "\ud800", "x\udfffy", "\r\n", "line\nbreak", "\u2028", "\u0085", "\x7f", "\x1b[31m",
    "\ufeff", "\u202e", "%00", "%", "../../etc/passwd", "\\", '"', "'; DROP TABLE users; --", "{{ 7 * 7 }}",
    "{% for x in range(10**9) %}{% endfor %}", "<script>alert(1)</script>", "javascript:alert(1)", "NaN", "-1",
    "1e999", "0x10", "\U0001f4a9", "é" * 300, "\u0660\u0661", "²", "*", "null", "true", "[]", "{}",
)
HUGE_NUMBERS = (
    0, -1, -0.0, 2**31 - 1, 2**31, -(2**31) - 1, 2**53 + 1, 2**63 - 1, 2**63, -(2**63), -(2**63) - 1, 2**64,
    10**100, -(10**100), 10**4000, 1e308, -1e308, 5e-324, 1e-300, float("inf"), float("-inf"), float("nan"),
)

CHARS = st.characters() | st.sampled_from(SURROGATES) | st.sampled_from(("\x00", "\n", "\x7f", "\u2028"))
TEXT = st.text(CHARS, max_size=30) | st.sampled_from(HOSTILE_TEXT)
HUGE_TEXT = st.tuples(st.sampled_from(("x", "\x00", "é", "\ud800", "\U0001f4a9", "a b")),
                      st.integers(1_000, 200_000)).map(lambda t: t[0] * t[1])
NUMBERS = st.integers() | st.floats() | st.sampled_from(HUGE_NUMBERS)
LEAVES = st.none() | st.booleans() | NUMBERS | TEXT
JSON_VALUES = st.recursive(LEAVES, lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(TEXT, inner, max_size=4), max_leaves=12)


def _nest(kind_depth: tuple[str, int]) -> Any:
    kind, depth = kind_depth
    value: Any = "deep"
    for _ in range(depth):
        value = [value] if kind == "list" else {"a": value}
    return value


# Nested deep, but within what json.dumps writes; ABYSS nests further: ``dumps``
# writes it as 5000 raw brackets, past any decoder's recursion limit.
DEEP = st.tuples(st.sampled_from(("list", "dict")), st.integers(20, 400)).map(_nest)
ABYSS = "\ufdd0abyss\ufdd0"
# (containers built fresh each time: a later mutation may change them in place)
MUTANTS = st.one_of(JSON_VALUES, st.sampled_from(HOSTILE_TEXT), HUGE_TEXT, st.sampled_from(HUGE_NUMBERS), DEEP,
                    st.just(ABYSS), st.builds(list), st.builds(dict))

# Bodies no JSON encoder writes: invalid UTF-8, nesting far past any limit, stray bytes.
RAW_BODIES = st.one_of(
    st.binary(max_size=300),
    st.sampled_from((b"", b" ", b"{", b"[", b'{"a":', b"\xff\xfe\x00", b'{"a": "\xc3\x28"}', b'"\xed\xa0\x80"',
                     b"[" * 100_000 + b"]" * 100_000, b'{"a":' * 50_000 + b"1" + b"}" * 50_000,
                     b'{"a": 1, "a": 2}', b"1" * 5000, b"\x00" * 64, b'{"a": 1e99999}', b"[1,]")),
)


def dumps(value: Any) -> bytes:
    return json.dumps(value, ensure_ascii=True).encode().replace(_ABYSS_JSON, b"[" * 5000 + b"]" * 5000)


_ABYSS_JSON = json.dumps(ABYSS).encode()


def _paths(value: Any, at: tuple = ()) -> list[tuple]:
    out = [at]
    if isinstance(value, dict):
        for k, v in value.items():
            out += _paths(v, (*at, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            out += _paths(v, (*at, i))
    return out


def _apply(value: Any, path: tuple, op: str, new: Any, key: str) -> Any:
    if not path:
        if op == "add" and isinstance(value, dict):
            value[key] = new
        return new if op == "replace" else value
    parent = value
    for step in path[:-1]:
        parent = parent[step]
    last = path[-1]
    if op == "replace":
        parent[last] = new
    elif op == "delete":
        del parent[last]
    elif isinstance(parent[last], dict):  # "add": an extra key where an object is
        parent[last][key] = new
    return value


@st.composite
def mutated(draw, sample: Any) -> Any:
    """``sample`` (a valid body) with one to three fields replaced by a hostile
    value, deleted, or given an extra key."""
    value = copy.deepcopy(sample)
    for _ in range(draw(st.integers(1, 3))):
        paths = _paths(value)
        path = draw(st.sampled_from(paths))
        op = draw(st.sampled_from(("replace", "replace", "delete", "add")))
        value = _apply(value, path, op, draw(MUTANTS), draw(TEXT))
    return value


def shaped(sample: Any) -> st.SearchStrategy[Any]:
    """The valid sample itself now and then, mostly mutated."""
    return st.just(sample) | mutated(sample) | mutated(sample)
