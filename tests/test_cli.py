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
