"""``decode_columns`` and ``decode_records``: batches decoded into columns, or straight into a
caller's record type with a prefix, without the records below an offset, in both encodings."""

from __future__ import annotations

import struct
from typing import NamedTuple

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from storage.batch import (
    MAGIC_MSGPACK,
    TIMESTAMP_TYPE_LOG_APPEND,
    CorruptBatchError,
    Record,
    decode_batch,
    decode_columns,
    decode_records,
    encode_batch,
    encode_kafka_v2_batch,
    stamp,
)

ENCODERS = {"msgpack": encode_batch, "kafka_v2": encode_kafka_v2_batch}


class Fetched(NamedTuple):
    topic: str
    partition: int
    offset: int
    timestamp: int
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes | None], ...]


records_strategy = st.lists(
    st.tuples(
        st.integers(min_value=0, max_value=2**40),
        st.none() | st.binary(max_size=16),
        st.none() | st.binary(max_size=32),
        st.none() | st.lists(st.tuples(st.text(max_size=6), st.none() | st.binary(max_size=6)), max_size=3),
    ),
    min_size=1,
    max_size=10,
)


def _expected(records, base_offset: int, from_offset: int) -> list[Fetched]:
    return [
        Fetched("t", 3, base_offset + i, ts, key, value, tuple(tuple(h) for h in headers or ()))
        for i, (ts, key, value, headers) in enumerate(records)
        if base_offset + i >= from_offset
    ]


@settings(max_examples=60, deadline=None)
@given(records=records_strategy, encoding=st.sampled_from(sorted(ENCODERS)),
       base_offset=st.integers(min_value=0, max_value=2**40), skip=st.integers(min_value=-3, max_value=12))
def test_records_match_the_model_in_the_callers_type(records, encoding, base_offset, skip):
    batch = stamp(ENCODERS[encoding](records), base_offset, 0)
    got = decode_records(batch, Fetched, ("t", 3), base_offset + skip)
    assert got == _expected(records, base_offset, base_offset + skip)
    assert all(type(r) is Fetched and type(r.headers) is tuple for r in got)
    assert all(type(h) is tuple for r in got for h in r.headers)
    # decode_batch is the same decoder with Record and no prefix
    assert decode_batch(batch) == [Record(*r[2:]) for r in _expected(records, base_offset, -1)]


@pytest.mark.parametrize("encoding", sorted(ENCODERS))
def test_records_without_headers_share_the_empty_headers_and_mixed_ones_are_kept(encoding):
    records = [(1, None, b"a", None), (2, b"k", b"b", [("h", b"x"), ("n", None)]), (3, None, b"c", [])]
    got = decode_records(stamp(ENCODERS[encoding](records), 50, 0), Fetched, ("t", 3))
    assert [(r.offset, r.headers) for r in got] == [(50, ()), (51, (("h", b"x"), ("n", None))), (52, ())]


def test_an_offset_past_the_batch_gives_no_records():
    batch = stamp(encode_batch([(1, None, b"a", None), (2, None, b"b", None)]), 10, 0)
    assert decode_records(batch, Fetched, ("t", 3), 12) == []
    assert [r.offset for r in decode_records(batch, Fetched, ("t", 3), 11)] == [11]


def test_log_append_time_batches_of_kafka_records_take_the_max_timestamp():
    batch = bytearray(encode_kafka_v2_batch([(5, None, b"a", None), (9, None, b"b", None)]))
    struct.pack_into(">h", batch, 21, TIMESTAMP_TYPE_LOG_APPEND)
    from crc32c import crc32c

    struct.pack_into(">I", batch, 17, crc32c(bytes(batch[21:])))
    assert [r.timestamp for r in decode_records(bytes(batch), Fetched, ("t", 3))] == [9, 9]


def _crc_valid_msgpack_batch(section: object, record_count: int = 1) -> bytes:
    from crc32c import crc32c

    body = struct.pack(">hiqqqhii", 0, record_count - 1, 0, 0, -1, -1, -1, record_count) + msgpack.packb(section)
    return struct.pack(">qiibI", 0, len(body) + 9, 0, MAGIC_MSGPACK, crc32c(body)) + body


@pytest.mark.parametrize("section", [
    [[0, None, b"v", None], [0, None, b"v"]],  # rows of different lengths
    [[0, None, b"v", None, 1], [0, None, b"v", None, 2]],  # every row one field too many
    [[0, None, b"v", None], 5],  # a row that is not an array
    [[0, None, b"v", [["h", b"x"]]], [0, None, b"v", [7]]],  # a header that is not a pair
    {"a": [0, None, b"v", None]},
])
def test_rows_of_the_wrong_shape_are_a_corrupt_batch_even_after_good_rows(section):
    batch = _crc_valid_msgpack_batch(section, 2 if isinstance(section, list) else 1)
    with pytest.raises(CorruptBatchError):
        decode_records(batch, Fetched, ("t", 3))


@settings(max_examples=60, deadline=None)
@given(records=records_strategy, encoding=st.sampled_from(sorted(ENCODERS)),
       base_offset=st.integers(min_value=0, max_value=2**40), skip=st.integers(min_value=-3, max_value=12),
       start=st.integers(min_value=0, max_value=10), length=st.integers(min_value=0, max_value=10))
def test_columns_and_their_slices_match_the_model(records, encoding, base_offset, skip, start, length):
    batch = stamp(ENCODERS[encoding](records), base_offset, 0)
    expected = _expected(records, base_offset, base_offset + skip)
    columns = decode_columns(batch, base_offset + skip)
    if not expected:
        assert columns is None
        return
    assert len(columns) == len(expected)
    assert list(columns.build(Fetched, ("t", 3))) == expected
    assert [columns.record(i, Fetched, ("t", 3)) for i in range(len(columns))] == expected
    assert list(columns.offsets) == [r.offset for r in expected]
    assert columns.headers is None or len(columns.headers) == len(expected)
    start = min(start, len(expected))
    end = min(start + length, len(expected))
    part = columns.slice(start, end)
    assert len(part) == end - start
    assert list(part.build(Fetched, ("t", 3))) == expected[start:end]


def test_msgpack_offsets_are_a_range_and_a_batch_without_headers_has_no_header_column():
    columns = decode_columns(stamp(encode_batch([(1, None, b"a", None)] * 3), 100, 0), 101)
    assert columns.offsets == range(101, 103) and columns.headers is None
    assert columns.slice(1, 2).offsets == range(102, 103)
    assert columns.values == (b"a", b"a") and columns.timestamps == (1, 1) and columns.keys == (None, None)
