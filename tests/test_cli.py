"""The ``kraft`` command against a real node: topics, produce from stdin, consume to stdout."""

from __future__ import annotations

import subprocess
import sys

import pytest

pytestmark = pytest.mark.timeout(120)


def kraft(*args: str, stdin: bytes | None = None, timeout_s: float = 60) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([sys.executable, "-m", "cluster", *args], input=stdin, capture_output=True,
                          timeout=timeout_s)


def test_topics_produce_consume_round_trip(node) -> None:
    b = ["--bootstrap-server", node.bootstrap]
    created = kraft("topics", "create", "orders", "--partitions", "3", "--config", "retention.ms=3600000", *b)
    assert created.returncode == 0, created.stderr
    assert kraft("topics", "list", *b).stdout.split() == [b"orders"]
    described = kraft("topics", "describe", "orders", *b).stdout.decode()
    assert "PartitionCount: 3" in described and "retention.ms=3600000" in described
    assert described.count("Partition: ") == 3

    lines = b"".join(b"k%d:value-%d\n" % (i % 5, i) for i in range(300))
    produced = kraft("produce", "orders", "--key-separator", ":", *b, stdin=lines)
    assert produced.returncode == 0, produced.stderr

    consumed = kraft("consume", "orders", "--from-beginning", "--max-messages", "300", *b)
    assert consumed.returncode == 0, consumed.stderr
    assert sorted(consumed.stdout.splitlines()) == sorted(b"value-%d" % i for i in range(300))

    # records with the same key share a partition, in the order they were sent
    for p in range(3):
        out = kraft("consume", "orders", "--partition", str(p), "--offset", "0", "--print-key",
                    "--key-separator", "=", "--max-messages", "1", *b)
        assert out.returncode == 0, out.stderr
        assert out.stdout.count(b"\n") == 1

    # --timeout-ms ends a consumer that has nothing more to read
    kraft("topics", "create", "empty", *b)
    idle = kraft("consume", "empty", "--partition", "0", "--offset", "0", "--timeout-ms", "500", *b)
    assert idle.returncode == 0 and idle.stdout == b""
    kraft("topics", "delete", "empty", *b)

    deleted = kraft("topics", "delete", "orders", *b)
    assert deleted.returncode == 0, deleted.stderr
    assert kraft("topics", "list", *b).stdout.split() == []


def test_errors_are_one_clear_line_and_nonzero(node) -> None:
    b = ["--bootstrap-server", node.bootstrap]
    assert kraft("topics", "create", "dup", *b).returncode == 0
    again = kraft("topics", "create", "dup", *b)
    assert again.returncode != 0
    assert b"TOPIC_ALREADY_EXISTS" in again.stderr and again.stderr.count(b"\n") == 1

    bad_name = kraft("topics", "create", "bad/name", *b)
    assert bad_name.returncode != 0 and b"INVALID_TOPIC_EXCEPTION" in bad_name.stderr

    bad_config = kraft("topics", "create", "cfg", "--config", "retention.ms=soon", *b)
    assert bad_config.returncode != 0 and b"retention.ms" in bad_config.stderr

    missing = kraft("topics", "delete", "nope", *b)
    assert missing.returncode != 0 and b"UNKNOWN_TOPIC_OR_PARTITION" in missing.stderr


def test_unreachable_server_is_reported(tmp_path) -> None:
    from cluster.launcher import free_port

    out = kraft("topics", "list", "--bootstrap-server", f"127.0.0.1:{free_port()}", timeout_s=90)
    assert out.returncode != 0
    assert out.stderr.strip() and out.stderr.count(b"\n") == 1


def test_groups_consume_describe_reset_delete(node) -> None:
    b = ["--bootstrap-server", node.bootstrap]
    assert kraft("topics", "create", "clicks", "--partitions", "2", *b).returncode == 0
    lines = b"".join(b"k%d:click-%d\n" % (i % 7, i) for i in range(100))
    assert kraft("produce", "clicks", "--key-separator", ":", *b, stdin=lines).returncode == 0

    first = kraft("consume", "clicks", "--group", "readers", "--from-beginning", "--max-messages", "60", *b)
    assert first.returncode == 0, first.stderr
    assert len(first.stdout.splitlines()) == 60
    listed = kraft("groups", "list", *b)
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.split()[:3] == [b"GROUP", b"STATE", b"MEMBERS"]
    assert b"readers" in listed.stdout and b"empty" in listed.stdout

    described = kraft("groups", "describe", "readers", *b)
    assert described.returncode == 0, described.stderr
    text = described.stdout.decode()
    assert "COMMITTED-OFFSET" in text and "LOG-END-OFFSET" in text and "LAG" in text
    assert "Total lag: 40" in text, text

    # the group resumes where it committed: the rest, and nothing twice
    second = kraft("consume", "clicks", "--group", "readers", "--timeout-ms", "1500", *b)
    assert second.returncode == 0, second.stderr
    assert sorted(first.stdout.splitlines() + second.stdout.splitlines()) == sorted(b"click-%d" % i for i in range(100))
    assert "Total lag: 0" in kraft("groups", "describe", "readers", *b).stdout.decode()

    reset = kraft("groups", "reset-offsets", "readers", "--topic", "clicks", "--to-earliest", *b)
    assert reset.returncode == 0, reset.stderr
    moved = sorted(reset.stdout.decode().splitlines())
    assert len(moved) == 2 and all(line.startswith("clicks-") and line.endswith("-> 0") for line in moved)
    assert "Total lag: 100" in kraft("groups", "describe", "readers", *b).stdout.decode()
    to_offset = kraft("groups", "reset-offsets", "readers", "--topic", "clicks", "--to-offset", "3", *b)
    assert to_offset.returncode == 0 and all(line.endswith("0 -> 3") for line in to_offset.stdout.decode().splitlines())
    at_time = kraft("groups", "reset-offsets", "readers", "--topic", "clicks", "--to-datetime", "2000-01-01T00:00:00", *b)
    assert at_time.returncode == 0, at_time.stderr
    assert all(line.endswith("3 -> 0") for line in at_time.stdout.decode().splitlines())

    deleted = kraft("groups", "delete", "readers", *b)
    assert deleted.returncode == 0, deleted.stderr
    missing = kraft("groups", "describe", "readers", *b)
    assert missing.returncode != 0 and b"GROUP_ID_NOT_FOUND" in missing.stderr
    assert missing.stderr.count(b"\n") == 1


def test_group_commands_report_kafka_errors_in_one_line(node) -> None:
    b = ["--bootstrap-server", node.bootstrap]
    gone = kraft("groups", "delete", "never-was", *b)
    assert gone.returncode != 0 and b"GROUP_ID_NOT_FOUND" in gone.stderr and gone.stderr.count(b"\n") == 1
    no_topic = kraft("groups", "reset-offsets", "g", "--topic", "nope", "--to-latest", *b)
    assert no_topic.returncode != 0 and b"UNKNOWN_TOPIC_OR_PARTITION" in no_topic.stderr
    bad_time = kraft("groups", "reset-offsets", "g", "--topic", "nope", "--to-datetime", "yesterday", *b)
    assert bad_time.returncode != 0 and b"--to-datetime" in bad_time.stderr and bad_time.stderr.count(b"\n") == 1
