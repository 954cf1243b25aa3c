"""Consumer groups against a real node: members split the partitions, commits, revocation,
leaving, static members, the poll timeout, and the admin's view (lag, resets, delete)."""

from __future__ import annotations

import itertools
import threading
import time
from typing import Any, Callable

import pytest

from cluster.client import (
    Admin,
    Consumer,
    ConsumerRebalanceListener,
    ConsumerRecord,
    Producer,
    TopicPartition,
    errors,
)
from tests.conftest import wait_until

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

_groups = itertools.count()


def new_group() -> str:
    return f"group-{next(_groups)}-{time.monotonic_ns() % 100000}"


def produce(bootstrap: str, topic: str, partitions: int, per_partition: int, start: int = 0) -> None:
    with Producer(bootstrap_servers=bootstrap, acks="all", linger_ms=2) as producer:
        for i in range(start, start + per_partition):
            for p in range(partitions):
                producer.send(topic, f"{p}:{i}".encode(), partition=p)
        producer.flush(timeout=60)


def member(bootstrap: str, group: str, *topics: str, **kwargs: Any) -> Consumer:
    kwargs.setdefault("retry_backoff_ms", 50)
    return Consumer(*topics, bootstrap_servers=bootstrap, group_id=group, **kwargs)


class Poller:
    """Polls a consumer in its own thread (a group member must keep polling to rebalance)."""

    def __init__(self, consumer: Consumer) -> None:
        self.consumer = consumer
        self.records: list[ConsumerRecord] = []
        self.lock = threading.Lock()
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                for batch in self.consumer.poll(timeout_ms=100).values():
                    with self.lock:
                        self.records.extend(batch)
        except BaseException as exc:  # reported by stop()
            self.error = exc

    def count(self) -> int:
        with self.lock:
            return len(self.records)

    def assignment(self) -> set[TopicPartition]:
        return self.consumer.assignment()

    def stop(self, close: bool = True) -> list[ConsumerRecord]:
        self._stop.set()
        self._thread.join(30)
        assert not self._thread.is_alive(), "the poll loop did not stop"
        if close:
            self.consumer.close()
        if self.error is not None:
            raise self.error
        return self.records


def member_count(admin: Admin, group: str) -> int:
    return {g.group_id: g.member_count for g in admin.list_groups()}.get(group, 0)


def poll_until(consumer: Consumer, cond: Callable[[list[ConsumerRecord]], bool], timeout_s: float = 30,
               **poll_kwargs: Any) -> list[ConsumerRecord]:
    got: list[ConsumerRecord] = []

    def step() -> bool:
        for batch in consumer.poll(timeout_ms=100, **poll_kwargs).values():
            got.extend(batch)
        return cond(got)
    wait_until(step, timeout_s, interval_s=0, message="the consumer's condition")
    return got


def test_two_members_split_the_partitions_and_together_read_every_record_once(shared_node, make_topic) -> None:
    topic, group, b = make_topic(6), new_group(), shared_node.bootstrap
    produce(b, topic, 6, 50)
    first = Poller(member(b, group, topic, auto_commit_interval_ms=100, max_poll_records=20))
    second: Poller | None = None
    try:
        wait_until(lambda: first.count() >= 60, 30, message="the first member reads")
        second = Poller(member(b, group, topic, auto_commit_interval_ms=100, max_poll_records=20))
        produce(b, topic, 6, 50, start=50)
        wait_until(lambda: first.count() + second.count() >= 600
                   and len(first.assignment()) == 3 and len(second.assignment()) == 3, 60,
                   message="600 records read and the partitions split 3/3")
        assert first.assignment().isdisjoint(second.assignment())
        assert first.assignment() | second.assignment() == {TopicPartition(topic, p) for p in range(6)}
    finally:
        records = (second.stop() if second is not None else []) + first.stop()
    positions = [(r.partition, r.offset) for r in records]
    assert len(positions) == len(set(positions)) == 600, "every record exactly once"
    assert {r.value for r in records} == {f"{p}:{i}".encode() for p in range(6) for i in range(100)}


class CommitOnRevoke(ConsumerRebalanceListener):
    def __init__(self) -> None:
        self.consumer: Consumer | None = None
        self.revoked: list[set[TopicPartition]] = []
        self.assigned: list[set[TopicPartition]] = []

    def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        self.revoked.append(revoked)
        assert self.consumer is not None
        self.consumer.commit()

    def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        self.assigned.append(assigned)


def test_a_commit_in_on_partitions_revoked_hands_the_position_to_the_next_owner(shared_node, make_topic) -> None:
    topic, group, b = make_topic(2), new_group(), shared_node.bootstrap
    produce(b, topic, 2, 40)
    listener = CommitOnRevoke()
    first = member(b, group, enable_auto_commit=False)
    listener.consumer = first
    first.subscribe([topic], listener=listener)
    poll_until(first, lambda got: len(got) == 80)
    assert listener.assigned == [{TopicPartition(topic, 0), TopicPartition(topic, 1)}]
    second = Poller(member(b, group, topic, enable_auto_commit=False))
    try:
        poll_until(first, lambda got: len(first.assignment()) == 1)
        (revoked,) = listener.revoked
        assert wait_until(lambda: second.assignment() == revoked, 30)
        assert second.consumer.committed(next(iter(revoked))) == 40, "the revoked partition was committed"
        produce(b, topic, 2, 5, start=40)
        wait_until(lambda: second.count() >= 5, 30)
        assert sorted(r.offset for r in second.records) == list(range(40, 45)), "the next owner starts there"
    finally:
        second.stop()
        first.close()


def test_auto_commit_commits_only_what_poll_returned(shared_node, make_topic) -> None:
    topic, group, b = make_topic(1), new_group(), shared_node.bootstrap
    tp = TopicPartition(topic, 0)
    produce(b, topic, 1, 200)
    consumer = member(b, group, topic, auto_commit_interval_ms=50, max_poll_records=5)
    try:
        got = poll_until(consumer, lambda got: len(got) >= 15)
        assert wait_until(lambda: consumer.highwater(tp) == 200, 10)
        consumer.pause(tp)  # poll returns nothing more, but keeps auto committing
        assert wait_until(lambda: consumer.poll(timeout_ms=50) == {} and consumer.committed(tp) == len(got), 30)
        assert len(got) < 200
        consumer.resume(tp)
        more = poll_until(consumer, lambda more: len(more) >= 5)
    finally:
        consumer.close()
    with member(b, group, enable_auto_commit=False) as reader:
        assert reader.committed(tp) == len(got) + len(more), "close commits what poll returned, no more"


def test_close_leaves_at_once_so_the_other_member_takes_over_well_within_the_session_timeout(
        shared_node, make_topic) -> None:
    topic, group, b = make_topic(4), new_group(), shared_node.bootstrap
    session_timeout_ms = 30000
    first = Poller(member(b, group, topic, session_timeout_ms=session_timeout_ms))
    second = Poller(member(b, group, topic, session_timeout_ms=session_timeout_ms))
    try:
        wait_until(lambda: len(first.assignment()) == 2 and len(second.assignment()) == 2, 30,
                   message="a 2/2 split")
        start = time.monotonic()
        first.stop()
        wait_until(lambda: len(second.assignment()) == 4, 30, message="the other member gets everything")
        took_s = time.monotonic() - start
        print(f"partitions moved {took_s:.2f} s after close (session timeout {session_timeout_ms / 1000:.0f} s)")
        assert took_s < session_timeout_ms / 1000 / 3
    finally:
        second.stop()
        first.stop()


def test_committed_offsets_survive_the_consumer(shared_node, make_topic) -> None:
    topic, group, b = make_topic(1), new_group(), shared_node.bootstrap
    tp = TopicPartition(topic, 0)
    produce(b, topic, 1, 100)
    with member(b, group, topic, enable_auto_commit=False) as consumer:
        got = poll_until(consumer, lambda got: len(got) >= 30, max_records=30)
        assert len(got) == 30
        consumer.commit()
        assert consumer.committed(tp) == 30
        with pytest.raises(errors.OffsetOutOfRangeError):
            consumer.commit({tp: 10})
    with member(b, group, topic, enable_auto_commit=False) as again:
        assert again.committed(tp) == 30
        assert again.committed({tp}) == {tp: (30, None, -1)}
        rest = poll_until(again, lambda rest: len(rest) >= 70)
        assert [r.offset for r in rest] == list(range(30, 100)), "a new consumer resumes at the committed offset"


def test_admin_lag_reset_and_delete(shared_node, make_topic, admin: Admin) -> None:
    topic, group, b = make_topic(2), new_group(), shared_node.bootstrap
    produce(b, topic, 2, 50)
    consumer = member(b, group, topic, enable_auto_commit=False)
    try:
        got = poll_until(consumer, lambda got: len(got) >= 30 and {r.partition for r in got} == {0, 1},
                         max_records=10)
        consumer.commit()
        (live,) = admin.describe_groups([group])
        assert [m.client_id for m in live.members] == ["kraft-consumer"]
        assert set(live.members[0].assignment) == {TopicPartition(topic, 0), TopicPartition(topic, 1)}
        assert live.total_lag == 100 - len(got)
        assert {p.member_id for p in live.partitions} == {live.members[0].member_id}
        assert (group, 1) in [(g.group_id, g.member_count) for g in admin.list_groups()]
        with pytest.raises(errors.NonEmptyGroupError, match="active members"):
            admin.reset_group_offsets(group, topic, to_earliest=True)
        with pytest.raises(errors.NonEmptyGroupError):
            admin.delete_groups([group])
    finally:
        consumer.close()
    (empty,) = admin.describe_groups([group])
    assert empty.state == "empty" and empty.members == ()
    by_partition = {p.partition: p for p in empty.partitions}
    consumed = {p: sum(1 for r in got if r.partition == p) for p in (0, 1)}
    for p in (0, 1):
        assert by_partition[p].log_end_offset == 50
        assert by_partition[p].committed_offset == consumed[p]
        assert by_partition[p].lag == 50 - consumed[p]
    assert empty.total_lag == 100 - len(got), "lag = produced - consumed"

    moved = admin.reset_group_offsets(group, topic, to_earliest=True)
    assert moved == {TopicPartition(topic, p): (consumed[p], 0) for p in (0, 1)}
    assert admin.describe_groups([group])[0].total_lag == 100
    moved = admin.reset_group_offsets(group, topic, to_offset=45)
    assert {tp: new for tp, (_, new) in moved.items()} == {TopicPartition(topic, 0): 45, TopicPartition(topic, 1): 45}
    assert admin.list_group_offsets(group)[TopicPartition(topic, 1)].offset == 45
    admin.reset_group_offsets(group, topic, to_latest=True)
    assert admin.describe_groups([group])[0].total_lag == 0

    admin.delete_groups([group])
    with pytest.raises(errors.GroupIdNotFoundError):
        admin.describe_groups([group])
    assert group not in [g.group_id for g in admin.list_groups()]


def test_a_static_member_gets_its_partitions_back(shared_node, make_topic) -> None:
    topic, group, b = make_topic(4), new_group(), shared_node.bootstrap
    first = Poller(member(b, group, topic, group_instance_id="worker-1", session_timeout_ms=30000))
    second = Poller(member(b, group, topic, group_instance_id="worker-2", session_timeout_ms=30000))
    try:
        wait_until(lambda: len(first.assignment()) == 2 and len(second.assignment()) == 2, 30,
                   message="a 2/2 split")
        mine, theirs = first.assignment(), second.assignment()
        first.stop()
        back = Poller(member(b, group, topic, group_instance_id="worker-1", session_timeout_ms=30000))
        try:
            wait_until(lambda: back.assignment() == mine, 30, message="the static member's partitions back")
            assert second.assignment() == theirs, "the other member kept its partitions throughout"
        finally:
            back.stop()
    finally:
        second.stop()
        first.stop()


def test_no_poll_for_max_poll_interval_leaves_and_the_next_poll_rejoins(shared_node, make_topic, admin) -> None:
    topic, group, b = make_topic(1), new_group(), shared_node.bootstrap
    tp = TopicPartition(topic, 0)
    produce(b, topic, 1, 10)
    lost: list[set[TopicPartition]] = []

    class Lost(ConsumerRebalanceListener):
        def on_partitions_lost(self, partitions: set[TopicPartition]) -> None:
            lost.append(partitions)

    consumer = member(b, group, max_poll_interval_ms=1500, enable_auto_commit=False)
    try:
        consumer.subscribe([topic], listener=Lost())
        poll_until(consumer, lambda got: len(got) == 10)
        wait_until(lambda: member_count(admin, group) == 0, 30, message="the member left after the poll timeout")
        with pytest.raises(errors.CommitFailedError, match="not a member"):
            consumer.commit({tp: 10})
        poll_until(consumer, lambda got: consumer.assignment() == {tp})
        assert lost == [{tp}], "the partitions were lost, then assigned again"
        consumer.commit({tp: 10})
        assert member_count(admin, group) == 1
    finally:
        consumer.close()


def test_a_pattern_subscription_reads_every_matching_topic(shared_node, make_topic, admin) -> None:
    from cluster.client import NewTopic

    stem = f"metrics-{time.monotonic_ns() % 100000}"
    admin.create_topics([NewTopic(f"{stem}-cpu", 2, 1), NewTopic(f"{stem}-disk", 1, 1), NewTopic(f"x{stem}", 1, 1)])
    b = shared_node.bootstrap
    for topic, partitions in ((f"{stem}-cpu", 2), (f"{stem}-disk", 1), (f"x{stem}", 1)):
        produce(b, topic, partitions, 5)
    wanted = {TopicPartition(f"{stem}-cpu", 0), TopicPartition(f"{stem}-cpu", 1), TopicPartition(f"{stem}-disk", 0)}
    for group in (new_group(), None):  # a group member, then a consumer without a group
        consumer = Consumer(bootstrap_servers=b, group_id=group, retry_backoff_ms=50)
        try:
            consumer.subscribe(pattern=rf"{stem}-.*")
            got = poll_until(consumer, lambda got: len(got) >= 15)
            assert consumer.assignment() == wanted
            assert consumer.subscription() == {f"{stem}-cpu", f"{stem}-disk"}
            assert {(r.topic, r.partition) for r in got} == set(wanted), "the pattern matches whole names only"
        finally:
            consumer.close()
