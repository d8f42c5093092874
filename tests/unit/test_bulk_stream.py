"""Bulk imports are parsed from a stream a line at a time: no read asks for the
whole file, a line longer than the limit is an error (and is not held), and
the lines around it still parse. The chunking into staged batches is ``take``."""

from __future__ import annotations

import io

import orjson

from policy.rules import Policy, PolicyConfig
from stores import bulk

POLICY = Policy(PolicyConfig(categories=["marketing", "job_alerts"]))


class Probe(io.BytesIO):
    """A file that records the largest read asked of it; a read of "all" fails."""

    def __init__(self, data: bytes):
        super().__init__(data)
        self.largest = 0

    def _asked(self, size) -> None:
        assert size is not None and size >= 0, "a read of the whole stream"
        self.largest = max(self.largest, size)

    def read(self, size=-1):
        self._asked(size)
        return super().read(size)

    def read1(self, size=-1):
        self._asked(size)
        return super().read1(size)

    def readline(self, size=-1):
        self._asked(size)
        return super().readline(size)

    def readinto(self, b):
        self._asked(len(b))
        return super().readinto(b)


def ndjson(n: int) -> bytes:
    return b"".join(orjson.dumps({"user_id": f"u{i}", "channel": "email", "category": "marketing",
                                  "enabled": False}) + b"\n" for i in range(n))


def test_ndjson_is_read_a_bounded_line_at_a_time():
    data = ndjson(3000)
    probe = Probe(data)
    parsed = list(bulk.parse_ndjson(probe))
    assert len(parsed) == 3000 and all(not isinstance(r, str) for _, r in parsed)
    assert probe.largest <= bulk.MAX_LINE + 1 < len(data) * 100


def test_a_line_past_the_limit_is_an_error_and_the_next_lines_still_parse():
    long = b'{"user_id": "' + b"x" * (bulk.MAX_LINE + 10) + b'"}\n'
    probe = Probe(ndjson(1) + long + ndjson(2))
    parsed = list(bulk.parse_ndjson(probe))
    assert [n for n, _ in parsed] == [1, 2, 3, 4]
    assert parsed[1][1] == f"longer than {bulk.MAX_LINE} bytes"
    assert not isinstance(parsed[2][1], str) and probe.largest <= bulk.MAX_LINE + 1


def test_csv_is_read_in_bounded_pieces_and_a_long_line_ends_it_with_an_error():
    data = b"user_id,channel,category,enabled\n" + b"".join(b"c%d,email,marketing,false\n" % i for i in range(2000))
    probe = Probe(data)
    parsed = list(bulk.parse_csv(probe))
    assert len(parsed) == 2000 and parsed[-1][0] == 2001 and probe.largest < len(data)
    bad = list(bulk.parse_csv(Probe(b"user_id,channel\nu1,email\n" + b"u2," + b"e" * (bulk.MAX_LINE + 5) + b"\n")))
    assert not isinstance(bad[0][1], str) and "not readable as CSV" in bad[-1][1]


def test_take_hands_out_chunks_with_their_errors_in_line_order():
    data = ndjson(12) + b"not json\n" + ndjson(3)
    parsed = bulk.parse_ndjson(io.BytesIO(data))
    rows, errors, ended = bulk.take(parsed, POLICY, 5)
    assert [n for n, _ in rows] == [1, 2, 3, 4, 5] and not errors and not ended
    chunks = [bulk.take(parsed, POLICY, 5) for _ in range(3)]
    assert [n for n, _, _ in chunks[1][1]] == [13] and chunks[-1][2]
    assert sum(len(r) for r, _, _ in chunks) == 10
