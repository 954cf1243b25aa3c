"""The record batch codec: round trips in both encodings, validation, and robustness."""

from __future__ import annotations

import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from storage.batch import (
    CRC_START,
    HEADER_BYTES,
    MAGIC_KAFKA_V2,
    MAGIC_MSGPACK,
    CorruptBatchError,
    Record,
    decode_batch,
    encode_batch,
    encode_kafka_v2_batch,
    iter_records,
    max_timestamp_of,
    parse_header,
    split_batches,
    stamp,
    validate,
)

ENCODERS = {"msgpack": encode_batch, "kafka_v2": encode_kafka_v2_batch}

records_strategy = st.lists(
    st.tuples(
        st.integers(min_value=0, max_value=2**40),
        st.none() | st.binary(max_size=32),
        st.none() | st.binary(max_size=64),
        st.none() | st.lists(st.tuples(st.text(max_size=8), st.none() | st.binary(max_size=8)),
                             max_size=3),
    ),
    min_size=1,
    max_size=12,
)


def _expected(records, base_offset=0):
    return [
        Record(base_offset + i, ts, key, value, tuple(tuple(h) for h in headers or ()))
        for i, (ts, key, value, headers) in enumerate(records)
    ]


@pytest.mark.parametrize("encoding", sorted(ENCODERS))
def test_round_trip_keys_values_none_and_headers(encoding):
    records = [
        (1_000, None, None, None),
        (1_005, b"key", None, [("h1", b"x"), ("h2", None)]),
        (999, None, b"value", []),
        (1_010, b"", b"", None),
    ]
    batch = ENCODERS[encoding](records)
    header = validate(batch)
    assert header.magic == (MAGIC_MSGPACK if encoding == "msgpack" else MAGIC_KAFKA_V2)
    assert header.record_count == 4 and header.last_offset_delta == 3
    assert header.base_timestamp == 1_000 and header.max_timestamp == 1_010
    assert max_timestamp_of(batch) == 1_010
    assert decode_batch(batch) == _expected(records)


@pytest.mark.parametrize("encoding", sorted(ENCODERS))
def test_big_values_round_trip(encoding):
    records = [(5, b"k" * 300, bytes(range(256)) * 4096, None), (6, None, b"x" * 70_000, None)]
    batch = ENCODERS[encoding](records)
    validate(batch)
    assert decode_batch(batch) == _expected(records)


@pytest.mark.parametrize("encoding", sorted(ENCODERS))
def test_stamp_keeps_crc_valid_and_shifts_offsets(encoding):
    records = [(1, b"a", b"b", None), (2, b"c", b"d", None)]
    stamped = stamp(ENCODERS[encoding](records), 1_000, 7)
    header = validate(stamped)
    assert (header.base_offset, header.partition_leader_epoch) == (1_000, 7)
    assert [r.offset for r in decode_batch(stamped)] == [1_000, 1_001]


@settings(max_examples=60, deadline=None)
@given(records=records_strategy, encoding=st.sampled_from(sorted(ENCODERS)),
       base_offset=st.integers(min_value=0, max_value=2**62))
def test_round_trip_property(records, encoding, base_offset):
    batch = stamp(ENCODERS[encoding](records), base_offset, 3)
    validate(batch)
    assert decode_batch(batch) == _expected(records, base_offset)


def test_split_and_iter_concatenated_batches():
    first = stamp(encode_batch([(1, None, b"a", None)]), 0, 0)
    second = stamp(encode_kafka_v2_batch([(2, None, b"b", None), (3, None, b"c", None)]), 1, 0)
    parts = split_batches(first + second)
    assert [bytes(p) for p in parts] == [bytes(first), bytes(second)]
    assert [r.value for r in iter_records(first + second)] == [b"a", b"b", b"c"]
    with pytest.raises(CorruptBatchError):
        split_batches(first + second[:-1])


def _with(batch: bytes, fmt: str, at: int, value: int) -> bytearray:
    out = bytearray(batch)
    struct.pack_into(fmt, out, at, value)
    return out


def test_validate_rejects_wrong_length_magic_crc_and_count():
    batch = encode_batch([(1, None, b"v", None), (2, None, b"w", None)])
    validate(batch)
    with pytest.raises(CorruptBatchError, match="batch_length"):
        validate(batch + b"\x00")
    with pytest.raises(CorruptBatchError, match="batch_length"):
        validate(_with(batch, ">i", 8, len(batch)))
    with pytest.raises(CorruptBatchError, match="magic"):
        validate(_with(batch, ">b", 16, 1))
    with pytest.raises(CorruptBatchError, match="CRC"):
        validate(_with(batch, ">I", 17, 0))
    with pytest.raises(CorruptBatchError, match="CRC"):
        corrupted = bytearray(batch)
        corrupted[-1] ^= 0xFF
        validate(corrupted)
    with pytest.raises(CorruptBatchError, match="record_count"):
        validate(_with(batch, ">i", 57, 5))
    with pytest.raises(CorruptBatchError, match="negative"):
        validate(_with(batch, ">i", 57, -1))
    with pytest.raises(CorruptBatchError, match="header"):
        validate(batch[:HEADER_BYTES - 1])


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), encoding=st.sampled_from(sorted(ENCODERS)))
def test_any_bit_flip_is_caught_by_validate(data, encoding):
    records = data.draw(records_strategy)
    batch = bytearray(stamp(ENCODERS[encoding](records), 42, 1))
    # Base offset and leader epoch are outside the CRC by design (the broker stamps them);
    # every other bit is covered by the length, magic, count or CRC check.
    bit = data.draw(st.integers(min_value=8 * 8, max_value=len(batch) * 8 - 1))
    if 12 * 8 <= bit < 16 * 8:
        bit = data.draw(st.integers(min_value=16 * 8, max_value=len(batch) * 8 - 1))
    batch[bit // 8] ^= 1 << (bit % 8)
    with pytest.raises(CorruptBatchError):
        validate(batch)


@settings(max_examples=200, deadline=None)
@given(blob=st.binary(max_size=300))
def test_random_bytes_only_raise_corrupt_batch_error(blob):
    for check in (validate, split_batches):
        try:
            check(blob)
        except CorruptBatchError:
            pass
    try:
        decode_batch(blob)
    except CorruptBatchError:
        pass


@settings(max_examples=200, deadline=None)
@given(records_section=st.binary(max_size=200), magic=st.sampled_from([MAGIC_MSGPACK, MAGIC_KAFKA_V2]),
       record_count=st.integers(min_value=1, max_value=5))
def test_crc_valid_garbage_records_decode_to_value_errors_only(records_section, magic, record_count):
    from crc32c import crc32c

    body = struct.pack(">hiqqqhii", 0, record_count - 1, 0, 0, -1, -1, -1, record_count) + records_section
    batch = struct.pack(">qiibI", 0, len(body) + 9, 0, magic, crc32c(body)) + body
    assert len(batch) - CRC_START == len(body)
    validate(batch)  # the header is sound: only the records are garbage
    try:
        decode_batch(batch)
    except CorruptBatchError:
        pass


def test_parse_header_fields():
    batch = stamp(encode_batch([(10, None, b"x", None), (30, None, b"y", None)]), 100, 2)
    header = parse_header(batch)
    assert header.total_bytes == len(batch)
    assert (header.last_offset, header.next_offset) == (101, 102)
    assert header.max_timestamp == 30


def _crc_valid_batch(records_section: bytes, magic: int, record_count: int) -> bytes:
    from crc32c import crc32c

    body = struct.pack(">hiqqqhii", 0, record_count - 1, 0, 0, -1, -1, -1, record_count) + records_section
    return struct.pack(">qiibI", 0, len(body) + 9, 0, magic, crc32c(body)) + body


@pytest.mark.parametrize("section", [
    [0], 7, [[0, 0, None, b"v"]], [["x", 0, None, b"v", None]], [[0, 0, None, b"v", 5]], {"a": 1},
])
def test_well_formed_msgpack_of_the_wrong_shape_is_a_corrupt_batch(section):
    import msgpack

    batch = _crc_valid_batch(msgpack.packb(section), MAGIC_MSGPACK, 1)
    validate(batch)
    with pytest.raises(CorruptBatchError):
        decode_batch(batch)


def test_batches_encoded_at_once_in_many_threads_and_after_a_huge_one_stay_intact() -> None:
    """Each thread packs with its own reused buffer: concurrent encodes never mix records,
    and a batch bigger than the kept buffer leaves the next ones intact."""
    import threading
    from storage.batch import PACKER_KEEP_BYTES_MAX

    outcomes: dict[int, bool] = {}

    def encode_many(worker: int) -> None:
        ok = True
        for n in range(1, 60):
            records = [(n, None, b"%d-%d-%d" % (worker, n, i), None) for i in range(n)]
            decoded = decode_batch(encode_batch(records))
            ok = ok and [r.value for r in decoded] == [r[2] for r in records]
        outcomes[worker] = ok

    threads = [threading.Thread(target=encode_many, args=(w,)) for w in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert outcomes == {0: True, 1: True, 2: True, 3: True}

    huge = [(1, None, b"h" * 1024, None)] * (PACKER_KEEP_BYTES_MAX // 1024 + 10)
    assert len(decode_batch(encode_batch(huge))) == len(huge)
    small = [(2, b"k", b"after", [("h", b"v")])]
    (record,) = decode_batch(encode_batch(small))
    assert (record.key, record.value, record.headers) == (b"k", b"after", (("h", b"v"),))
