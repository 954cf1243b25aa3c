"""The local metadata log: durable appends, replay on open, torn tails cut off, subscribers."""

from __future__ import annotations

import random
import struct
import threading
import zlib

import msgpack
import pytest

from kraft.image import MetadataImage
from kraft.local_log import FILE_MAGIC, FILE_NAME, LocalMetadataLog, MetadataLogError
from kraft.quorum import InMemoryMetadataLog, MetadataLog
from kraft.records import (
    ConfigRecord,
    PartitionRecord,
    RegisterBrokerRecord,
    RemoveTopicRecord,
    TopicRecord,
    encode_record,
)

pytestmark = pytest.mark.timeout(30)

BROKER = [RegisterBrokerRecord(1, "127.0.0.1", 9092, None)]
TOPIC = [
    TopicRecord("id-a", "a"),
    ConfigRecord("id-a", "retention.ms", "1000"),
    PartitionRecord("id-a", 0, (1,), (1,), 1, 0, 0),
]


@pytest.fixture
def log(tmp_path):
    opened = LocalMetadataLog(tmp_path)
    yield opened
    opened.close()


def test_satisfies_the_port(log):
    assert isinstance(log, MetadataLog)
    assert isinstance(InMemoryMetadataLog(), MetadataLog)


def test_new_log_is_empty(tmp_path, log):
    assert log.image == MetadataImage.EMPTY
    assert (tmp_path / FILE_NAME).read_bytes() == FILE_MAGIC


def test_creates_missing_directory(tmp_path):
    with LocalMetadataLog(tmp_path / "a" / "b") as nested:
        assert nested.image.offset == 0
    assert (tmp_path / "a" / "b" / FILE_NAME).exists()


def test_append_applies_and_returns_image(log):
    image = log.append(BROKER)
    assert image is log.image and image.offset == 1 and 1 in image.brokers
    image = log.append(TOPIC)
    assert image.offset == 4 and image.topic("a").configs["retention.ms"] == "1000"


def test_empty_append_writes_nothing(tmp_path, log):
    assert log.append([]) is log.image
    assert (tmp_path / FILE_NAME).stat().st_size == len(FILE_MAGIC)


def test_reopen_replays(tmp_path):
    with LocalMetadataLog(tmp_path) as first:
        first.append(BROKER)
        first.append(TOPIC)
        first.append([RemoveTopicRecord("id-a"), TopicRecord("id-b", "b")])
        expected = first.image
    with LocalMetadataLog(tmp_path) as second:
        assert second.image == expected
        assert second.image.offset == 6
        assert second.image.topic("a") is None and second.image.topic("b") is not None
        second.append([TopicRecord("id-c", "c")])
    with LocalMetadataLog(tmp_path) as third:
        assert third.image.offset == 7 and third.image.topic("c") is not None


def test_records_that_do_not_apply_are_not_written(tmp_path, log):
    log.append(BROKER)
    size = (tmp_path / FILE_NAME).stat().st_size
    with pytest.raises(ValueError):
        log.append([TopicRecord("id-x", "x"), RemoveTopicRecord("unknown")])
    assert (tmp_path / FILE_NAME).stat().st_size == size
    assert log.image.offset == 1 and log.image.topic("x") is None


@pytest.mark.parametrize(
    "garbage",
    [
        b"\x00",  # a single stray byte
        b"\x00" * 64,  # a zero-filled extension of the file
        struct.pack(">II", 1000, 0) + b"partial",  # a header promising more than is there
        struct.pack(">II", 5, 12345) + b"abcde",  # a whole frame with a wrong CRC
        struct.pack(">II", 5, 0) + b"abcde" + b"more garbage after it",
        random.Random(7).randbytes(200),
    ],
    ids=["byte", "zeros", "short", "bad-crc", "bad-crc-then-more", "random"],
)
def test_torn_tail_is_ignored_and_truncated(tmp_path, garbage):
    path = tmp_path / FILE_NAME
    with LocalMetadataLog(tmp_path) as first:
        first.append(BROKER)
        first.append(TOPIC)
        expected = first.image
    good_size = path.stat().st_size
    with open(path, "ab") as f:
        f.write(garbage)
    with LocalMetadataLog(tmp_path) as second:
        assert second.image == expected
        assert path.stat().st_size == good_size  # cut off at open, before any append
        second.append([TopicRecord("id-b", "b")])
        after = second.image
    with LocalMetadataLog(tmp_path) as third:
        assert third.image == after  # the append after the cut is readable


def test_torn_last_append_is_dropped_whole(tmp_path):
    path = tmp_path / FILE_NAME
    with LocalMetadataLog(tmp_path) as first:
        first.append(BROKER)
        size_before = path.stat().st_size
        first.append(TOPIC)
        size_after = path.stat().st_size
    # A crash part-way through writing the second frame: any prefix of it.
    data = path.read_bytes()
    for cut in (size_before + 1, size_before + 8, size_after - 1):
        path.write_bytes(data[:cut])
        with LocalMetadataLog(tmp_path) as reopened:
            assert reopened.image.offset == 1  # all three TOPIC records gone, none half-applied
            assert reopened.image.topic("a") is None
        assert path.stat().st_size == size_before


def test_torn_file_header_is_rewritten(tmp_path):
    (tmp_path / FILE_NAME).write_bytes(FILE_MAGIC[:3])
    with LocalMetadataLog(tmp_path) as log:
        assert log.image.offset == 0
        log.append(BROKER)
    with LocalMetadataLog(tmp_path) as log:
        assert log.image.offset == 1


def test_foreign_file_is_refused(tmp_path):
    (tmp_path / FILE_NAME).write_bytes(b"something else entirely")
    with pytest.raises(MetadataLogError):
        LocalMetadataLog(tmp_path)


def test_valid_crc_with_bad_records_is_refused(tmp_path):
    with LocalMetadataLog(tmp_path) as first:
        first.append(BROKER)
    payload = msgpack.packb([encode_record(RemoveTopicRecord("unknown"))], use_bin_type=True)
    with open(tmp_path / FILE_NAME, "ab") as f:
        f.write(struct.pack(">II", len(payload), zlib.crc32(payload)) + payload)
    with pytest.raises(MetadataLogError, match="cannot be replayed"):
        LocalMetadataLog(tmp_path)


def test_second_open_of_same_log_is_refused(tmp_path, log):
    with pytest.raises(MetadataLogError, match="in use"):
        LocalMetadataLog(tmp_path)


def test_closed_log_refuses_appends(tmp_path):
    log = LocalMetadataLog(tmp_path)
    log.close()
    log.close()  # idempotent
    with pytest.raises(MetadataLogError):
        log.append(BROKER)


def test_subscribe_sees_old_and_new(log):
    seen = []
    log.subscribe(lambda old, new: seen.append((old.offset, new.offset, threading.get_ident())))
    log.append(BROKER)
    log.append([])  # nothing appended, nothing notified
    log.append(TOPIC)
    me = threading.get_ident()
    assert seen == [(0, 1, me), (1, 4, me)]


def test_failing_subscriber_does_not_fail_append_or_others(log):
    seen = []

    def broken(old, new):
        raise RuntimeError("boom")

    log.subscribe(broken)
    log.subscribe(lambda old, new: seen.append(new.offset))
    assert log.append(BROKER).offset == 1
    assert seen == [1]


def test_subscriber_must_not_append(log):
    errors = []

    def appender(old, new):
        try:
            log.append([TopicRecord("id-z", "z")])
        except MetadataLogError as exc:
            errors.append(exc)

    log.subscribe(appender)
    log.append(BROKER)
    assert len(errors) == 1 and log.image.topic("z") is None


def test_concurrent_appends_are_serialised(tmp_path):
    seen = []
    with LocalMetadataLog(tmp_path) as log:
        log.subscribe(lambda old, new: seen.append((old.offset, new.offset)))

        def worker(index: int) -> None:
            for j in range(10):
                log.append([TopicRecord(f"id-{index}-{j}", f"t-{index}-{j}")])

        threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=20)
        assert log.image.offset == 40
        expected = log.image
    assert seen == [(i, i + 1) for i in range(40)]  # a chain, in order
    with LocalMetadataLog(tmp_path) as reopened:
        assert reopened.image == expected


def test_in_memory_log_follows_the_same_contract():
    log = InMemoryMetadataLog()
    seen = []
    log.subscribe(lambda old, new: seen.append((old.offset, new.offset)))
    assert log.append(BROKER).offset == 1
    with pytest.raises(ValueError):
        log.append([RemoveTopicRecord("unknown")])
    assert log.image.offset == 1 and seen == [(0, 1)]
    log.close()
    with pytest.raises(RuntimeError):
        log.append(BROKER)
