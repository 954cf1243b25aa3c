"""``PartitionRecords``, what ``poll`` returns per partition: it must behave as the list of
``ConsumerRecord`` it stands for, over batches of either encoding, whole or in part."""

from __future__ import annotations

import gc
import pickle

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cluster.client.structs import ConsumerRecord, PartitionRecords
from storage.batch import RecordColumns, decode_columns, encode_batch, encode_kafka_v2_batch, stamp

ENCODERS = {"msgpack": encode_batch, "kafka_v2": encode_kafka_v2_batch}

Row = tuple  # (timestamp_ms, key, value, headers)


def columns_of(rows: list[Row], base_offset: int, encoding: str, from_offset: int = -1) -> RecordColumns:
    columns = decode_columns(stamp(ENCODERS[encoding](rows), base_offset, 0), from_offset)
    assert columns is not None
    return columns


def model(rows: list[Row], base_offset: int, from_offset: int = -1) -> list[ConsumerRecord]:
    return [ConsumerRecord("t", 2, base_offset + i, ts, key, value, tuple(tuple(h) for h in headers or ()))
            for i, (ts, key, value, headers) in enumerate(rows) if base_offset + i >= from_offset]


def rows_of(count: int, first: int = 0, headers: bool = False) -> list[Row]:
    return [(100 + i, b"k%d" % i if i % 2 else None, b"v%d" % i,
             [("h", b"%d" % i)] if headers and i % 3 == 0 else None) for i in range(first, first + count)]


def two_batches(encoding: str = "msgpack") -> tuple[PartitionRecords, list[ConsumerRecord]]:
    """Offsets 10..14 (a batch 8..14 taken from offset 10) then 15..17 (the start of 15..19)."""
    first = rows_of(7)
    second = rows_of(5, first=7, headers=True)
    chunks = [columns_of(first, 8, encoding, 10), columns_of(second, 15, encoding).slice(0, 3)]
    return PartitionRecords("t", 2, chunks), model(first, 8, 10) + model(second, 15)[:3]


@pytest.mark.parametrize("encoding", sorted(ENCODERS))
def test_it_reads_as_the_list_of_records(encoding: str) -> None:
    records, expected = two_batches(encoding)
    assert len(records) == len(expected) == 8
    assert bool(records)
    assert list(records) == expected
    assert list(records) == expected, "iteration is repeatable"
    assert [records[i] for i in range(8)] == expected
    assert [records[i] for i in range(-8, 0)] == expected
    assert records[-1].offset == 17 and records[0].offset == 10
    assert all(type(r) is ConsumerRecord for r in records)
    assert [r.offset for r in reversed(records)] == list(range(17, 9, -1))
    for bad in (8, -9, 100):
        with pytest.raises(IndexError):
            records[bad]
    with pytest.raises(TypeError):
        records["0"]  # type: ignore[call-overload]


@pytest.mark.parametrize("encoding", sorted(ENCODERS))
def test_equality_follows_the_contents_as_a_lists_does(encoding: str) -> None:
    records, expected = two_batches(encoding)
    assert records == expected and expected == records
    assert not records != expected
    assert records != expected[:-1] and records != expected + expected[:1]
    changed = expected[:3] + [expected[3]._replace(value=b"other")] + expected[4:]
    assert records != changed and changed != records
    assert records == PartitionRecords("t", 2, [columns_of(rows_of(7), 8, encoding, 10),
                                                columns_of(rows_of(5, 7, headers=True), 15, encoding).slice(0, 3)])
    assert records != tuple(expected), "as a list, never equal to a tuple"
    with pytest.raises(TypeError):
        hash(records)


def test_in_index_count_concatenation_repr_and_pickle_are_the_lists() -> None:
    records, expected = two_batches()
    assert expected[5] in records and expected[5]._replace(offset=99) not in records
    assert records.index(expected[5]) == 5
    assert records.count(expected[2]) == 1
    assert records + expected[:1] == expected + expected[:1]
    assert expected[:1] + records == expected[:1] + expected
    assert records + records == expected + expected
    grown = list(expected[:1])
    grown += records
    assert grown == expected[:1] + expected
    assert repr(records) == repr(expected)
    assert pickle.loads(pickle.dumps(records)) == expected


@settings(max_examples=80, deadline=None)
@given(start=st.none() | st.integers(-10, 10), stop=st.none() | st.integers(-10, 10),
       step=st.none() | st.integers(-3, 3).filter(lambda s: s != 0))
def test_slices_are_lists_of_the_same_records(start: int | None, stop: int | None, step: int | None) -> None:
    records, expected = two_batches()
    got = records[start:stop:step]
    assert type(got) is list
    assert got == expected[start:stop:step]


def test_headers_are_tuples_when_present_and_empty_when_absent() -> None:
    for encoding in sorted(ENCODERS):
        with_headers = PartitionRecords("t", 2, [columns_of(rows_of(4, headers=True), 0, encoding)])
        assert [r.headers for r in with_headers] == [(("h", b"0"),), (), (), (("h", b"3"),)]
        assert with_headers[3].headers == (("h", b"3"),) and with_headers[1].headers == ()
        without = PartitionRecords("t", 2, [columns_of(rows_of(3), 0, encoding)])
        assert [r.headers for r in without] == [(), (), ()] and without[-1].headers == ()


def test_kafka_v2_records_keep_their_own_offsets() -> None:
    records = PartitionRecords("t", 2, [columns_of(rows_of(5), 40, "kafka_v2", 42)])
    assert [r.offset for r in records] == [42, 43, 44]
    assert records[1] == model(rows_of(5), 40)[3]


@settings(max_examples=40, deadline=None)
@given(batches=st.lists(st.tuples(st.integers(1, 6), st.sampled_from(sorted(ENCODERS)), st.booleans()),
                        min_size=1, max_size=4),
       cut=st.integers(0, 5))
def test_any_run_of_batches_matches_the_model(batches: list[tuple[int, str, bool]], cut: int) -> None:
    chunks: list[RecordColumns] = []
    expected: list[ConsumerRecord] = []
    offset = 0
    for count, encoding, headers in batches:
        rows = rows_of(count, first=offset, headers=headers)
        from_offset = offset + min(cut, count - 1) if not chunks else -1  # the first batch may start before the position
        chunks.append(columns_of(rows, offset, encoding, from_offset))
        expected += model(rows, offset, from_offset)
        offset += count
    records = PartitionRecords("t", 2, chunks)
    assert len(records) == len(expected)
    assert records == expected
    assert [records[i] for i in range(-len(expected), len(expected))] == expected + expected


def test_records_are_built_only_when_read() -> None:
    gc.collect()

    def live_records() -> int:
        return sum(1 for o in gc.get_objects() if type(o) is ConsumerRecord)

    before = live_records()
    records = PartitionRecords("t", 2, [columns_of(rows_of(50), 0, "msgpack")])
    assert live_records() == before, "holding the records must not hold a tuple per record"
    kept = list(records)
    assert live_records() == before + 50
    del kept
    assert live_records() == before
    assert len(records) == 50
