"""The checkers on hand-written histories: each passes a good history and fails a bad one."""

from __future__ import annotations

from typing import Any

import pytest

from tests.faults import checkers
from tests.faults.history import History, decode_value, encode_value, load

pytestmark = pytest.mark.timeout(30)


class Script:
    """Builds a history by hand, with a fake clock that ticks 0.1 s per event."""

    def __init__(self) -> None:
        self.t = 0.0
        self.history = History(clock=self.clock)

    def clock(self) -> float:
        self.t += 0.1
        return self.t

    def send(self, value: int, partition: int, outcome: str = "ok", offset: int | None = None,
             error: str | None = None) -> None:
        self.history.invoke("p0", "send", value, partition=partition)
        getattr(self.history, outcome)("p0", "send", value, partition=partition, offset=offset, error=error)

    def assign(self, process: str, assignment: int, positions: dict[int, int]) -> None:
        self.history.ok(process, "assign", {"mode": "assign", "positions": sorted(positions.items())},
                        assignment=assignment)

    def poll(self, process: str, assignment: int, reads: list[list[Any]]) -> None:
        self.history.ok(process, "poll", reads, assignment=assignment)

    def drain(self, records: dict[int, list[Any]], complete: bool = True) -> None:
        self.assign("drain", 0, {p: 0 for p in records})
        self.poll("drain", 0, [[p, o, v] for p, values in sorted(records.items()) for o, v in enumerate(values)])
        self.history.ok("drain", "drain-end", {"ends": sorted((p, len(v)) for p, v in records.items()),
                                               "complete": complete, "positions": []})

    def hw(self, partition: int, epoch: int, hw: int, node: int = 1, incarnation: int = 1) -> None:
        self.history.ok(f"hw-{node}", "hw", {"node": node, "incarnation": incarnation, "leader_epoch": epoch,
                                             "high_watermark": hw}, partition=partition)

    def commit(self, group: str, offsets: dict[int, int], process: str = "g0", outcome: str = "ok",
               error: str | None = None) -> None:
        value = {"group": group, "offsets": sorted(offsets.items())}
        self.history.invoke(process, "commit", value, assignment=0)
        getattr(self.history, outcome)(process, "commit", value, assignment=0, error=error)

    def probe(self, group: str, offsets: dict[int, int | None]) -> None:
        self.history.invoke("o0", "committed", {"group": group})
        self.history.ok("o0", "committed", {"group": group, "offsets": sorted(offsets.items())})

    def join(self, process: str, group: str = "g") -> None:
        self.history.ok(process, "join", {"group": group}, assignment=0)

    def group_assign(self, process: str, starts: dict[int, int | None], since: int | None = None,
                     group: str = "g") -> None:
        """A member's assign op; ``since`` defaults to the event just before it (its poll began then)."""
        self.history.ok(process, "assign", {
            "mode": "group", "group": group, "member": f"m-{process}", "partitions": sorted(starts.items()),
            "since": self.history.last_index() if since is None else since}, assignment=0)

    def revoke(self, process: str, partitions: list[int], reason: str = "revoked", group: str = "g") -> None:
        self.history.ok(process, "revoke", {"mode": "group", "group": group, "partitions": partitions,
                                            "reason": reason}, assignment=0)

    @property
    def events(self) -> list[dict[str, Any]]:
        return self.history.events


def good_run() -> Script:
    """Two partitions; values 0..5 acked at dense offsets, value 6 failed, value 7 unknown."""
    s = Script()
    for value in range(6):
        s.send(value, value % 2, offset=value // 2)
    s.send(6, 0, "fail", error="NOT_ENOUGH_REPLICAS")
    s.send(7, 1, "info", error="REQUEST_TIMED_OUT")
    s.assign("c0", 0, {0: 0, 1: 0})
    s.poll("c0", 0, [[0, 0, 0], [0, 1, 2], [1, 0, 1]])
    s.poll("c0", 0, [[0, 2, 4], [1, 1, 3]])
    s.hw(0, 1, 1)
    s.hw(0, 1, 3)
    s.history.ok("nemesis", "recovered", {"seconds": 1.0})
    s.drain({0: [0, 2, 4], 1: [1, 3, 5]})
    return s


def dump_of(records: dict[int, list[Any]]) -> checkers.Dump:
    return {node: {p: {"records": [[o, v] for o, v in enumerate(values)], "log_start_offset": 0,
                       "log_end_offset": len(values), "high_watermark": len(values)}
                   for p, values in records.items()} for node in (1, 2, 3)}


GOOD_DUMP = dump_of({0: [0, 2, 4], 1: [1, 3, 5]})


def test_a_good_history_passes_every_checker() -> None:
    verdicts = checkers.check_all(good_run().events, GOOD_DUMP)
    assert {v.name: v.verdict for v in verdicts} == {
        "lost_writes": "pass", "duplicates": "pass", "offset_conflicts": "pass", "failed_visible": "pass",
        "consumer_order": "pass", "committed_offsets": "unknown", "group_ownership": "unknown",
        "replicas_agree": "pass",
        "high_watermarks": "pass", "recovery": "pass"}


def test_lost_write_fails_when_an_acked_value_is_not_drained() -> None:
    s = good_run()
    s.events[:] = [e for e in s.events if e["process"] != "drain"]
    s.drain({0: [0, 2], 1: [1, 3, 5]})  # 4 was acked at 0/2
    verdict = checkers.lost_writes(s.events, GOOD_DUMP)
    assert verdict.failed and verdict.details["lost"] == 1
    assert verdict.details["lost_examples"] == [[4, 0, 2]]


def test_lost_write_fails_when_an_acked_value_sits_at_another_offset() -> None:
    s = good_run()
    s.events[:] = [e for e in s.events if e["process"] != "drain"]
    s.drain({0: [2, 0, 4], 1: [1, 3, 5]})
    verdict = checkers.lost_writes(s.events)
    assert verdict.failed and verdict.details["misplaced"] == 2 and verdict.details["lost"] == 0


def test_lost_write_fails_without_a_drain() -> None:
    s = Script()
    s.send(0, 0, offset=0)
    assert checkers.lost_writes(s.events).failed


def test_duplicates_are_counted_and_reported_not_failed() -> None:
    s = good_run()
    s.events[:] = [e for e in s.events if e["process"] != "drain"]
    s.drain({0: [0, 2, 4, 4, 7], 1: [1, 3, 5]})
    verdict = checkers.duplicates(s.events)
    assert verdict.verdict == "info" and not verdict.failed
    assert verdict.details["values_duplicated"] == 1 and verdict.details["extra_copies"] == 1
    assert verdict.details["acked_values_duplicated"] == 1
    assert checkers.summarize(s.events)["duplicated"] == 1


def test_offset_conflict_between_a_read_and_the_drain_fails() -> None:
    s = good_run()
    s.poll("c0", 0, [[0, 3, 99]])
    s.events[:] = [e for e in s.events if e["process"] != "drain"]
    s.drain({0: [0, 2, 4, 6], 1: [1, 3, 5]})
    verdict = checkers.offset_conflicts(s.events, None)
    assert verdict.failed and verdict.details["conflicts"] == 1


def test_offset_conflict_in_a_replica_dump_below_the_high_watermark_fails() -> None:
    dump = dump_of({0: [0, 2, 4], 1: [1, 3, 5]})
    dump[2][1]["records"][2] = [2, 42]
    verdict = checkers.offset_conflicts(good_run().events, dump)
    assert verdict.failed and verdict.details["examples"][0][:2] == [1, 2]
    # Above the high watermark a replica's tail is not judged by this checker.
    dump = dump_of({0: [0, 2, 4], 1: [1, 3, 5]})
    dump[2][1]["records"].append([3, 42])
    assert not checkers.offset_conflicts(good_run().events, dump).failed


def test_a_definitely_failed_write_that_becomes_visible_fails() -> None:
    s = good_run()
    s.poll("c0", 0, [[1, 2, 6]])
    verdict = checkers.failed_visible(s.events, GOOD_DUMP)
    assert verdict.failed and verdict.details["visible"] == 1
    # ... also when only a replica holds it, even above the high watermark.
    dump = dump_of({0: [0, 2, 4], 1: [1, 3, 5]})
    dump[3][0]["records"].append([3, 6])
    assert checkers.failed_visible(good_run().events, dump).failed
    # An unknown (info) outcome may become visible.
    s = good_run()
    s.poll("c0", 0, [[1, 2, 7]])
    assert not checkers.failed_visible(s.events, GOOD_DUMP).failed


def test_a_consumer_reading_backwards_fails() -> None:
    s = good_run()
    s.poll("c0", 0, [[0, 1, 2]])
    verdict = checkers.consumer_order(s.events)
    assert verdict.failed and verdict.details["backwards"] == 1


def test_a_consumer_skipping_an_offset_fails() -> None:
    s = good_run()
    s.poll("c0", 0, [[1, 3, 7]])  # expected 1/2 next
    verdict = checkers.consumer_order(s.events)
    assert verdict.failed and verdict.details["skips"] == 1


def test_a_consumer_starting_past_its_assigned_position_fails_and_a_new_assignment_may_restart() -> None:
    s = good_run()
    s.assign("c0", 1, {0: 0, 1: 0})
    s.poll("c0", 1, [[0, 0, 0], [1, 0, 1]])  # a new assignment from 0: fine
    assert not checkers.consumer_order(s.events).failed
    s.assign("c0", 2, {0: 3, 1: 2})
    s.poll("c0", 2, [[0, 4, 8]])
    assert checkers.consumer_order(s.events).failed


def test_committed_offsets_going_backwards_fail() -> None:
    s = good_run()
    s.commit("g", {0: 1, 1: 2})
    s.commit("g", {0: 3})
    s.commit("other", {0: 1})
    assert checkers.committed_offsets(s.events).verdict == "pass"
    s.commit("g", {0: 2}, process="g1")  # acknowledged after 3 was: backwards
    verdict = checkers.committed_offsets(s.events)
    assert verdict.failed and verdict.details["backwards"] == 1
    assert verdict.details["examples"][0][:5] == ["g", 0, 3, 2, "commit"]


def test_commits_that_overlap_in_time_are_not_ordered() -> None:
    s = good_run()
    value = {"group": "g", "offsets": [[0, 2]]}
    s.history.invoke("g0", "commit", value, assignment=0)
    s.commit("g", {0: 3}, process="g1")  # completed while g0's commit of 2 was out
    s.history.ok("g0", "commit", value, assignment=0)
    assert checkers.committed_offsets(s.events).verdict == "pass"


def test_a_committed_offset_probe_below_an_acknowledged_commit_fails() -> None:
    """The committed-offsets regression the suite must catch: a commit of 3 was acknowledged,
    then an OffsetFetch probe saw 1."""
    s = good_run()
    s.commit("g", {0: 0, 1: 0}, process="setup")
    s.probe("g", {0: 0, 1: 0})
    s.commit("g", {0: 3})
    s.probe("g", {0: 3, 1: 0})
    assert checkers.committed_offsets(s.events).verdict == "pass"
    s.probe("g", {0: 1, 1: 0})
    verdict = checkers.committed_offsets(s.events)
    assert verdict.failed and verdict.details["backwards"] == 1
    assert verdict.details["examples"][0][:5] == ["g", 0, 3, 1, "committed"]
    assert checkers.summarize(s.events)["committed_regressions"] == 1


def test_a_stale_answer_across_the_resume_of_a_paused_coordinator_is_marked_and_still_fails() -> None:
    s = good_run()
    s.commit("g", {0: 1})
    pause = {"fault": 0, "kind": "pause", "role": "controller", "nodes": [2], "links": [], "controller": 2}
    s.history.info("nemesis", "fault", pause)
    s.commit("g", {0: 3}, process="g1")  # through the next coordinator
    s.history.invoke("o0", "committed", {"group": "g"})  # sent to the paused one
    s.history.info("nemesis", "heal", pause)
    s.history.ok("o0", "committed", {"group": "g", "offsets": [[0, 1]]})  # its old image
    verdict = checkers.committed_offsets(s.events)
    assert verdict.failed and verdict.details["backwards"] == 1
    assert verdict.details["backwards_across_coordinator_resume"] == 1
    s.probe("g", {0: 2})  # no pause around this one
    verdict = checkers.committed_offsets(s.events)
    assert verdict.details["backwards"] == 2 and verdict.details["backwards_across_coordinator_resume"] == 1


def test_a_member_starting_below_or_without_the_committed_offset_fails() -> None:
    s = good_run()
    s.commit("g", {0: 0, 1: 0}, process="setup")
    s.commit("g", {0: 2, 1: 1})
    s.group_assign("g1", {0: 2, 1: 1})
    assert checkers.committed_offsets(s.events).verdict == "pass"
    s.group_assign("g1", {0: 1})  # its OffsetFetch began after the commit of 2 was acknowledged
    assert checkers.committed_offsets(s.events).failed
    s = good_run()
    s.commit("g", {0: 0, 1: 0}, process="setup")
    s.group_assign("g1", {0: None})  # the committed offset disappeared
    verdict = checkers.committed_offsets(s.events)
    assert verdict.failed and verdict.details["examples"][0][:5] == ["g", 0, 0, None, "assign"]


def test_a_member_whose_offset_fetch_began_before_a_commit_may_start_below_it() -> None:
    s = good_run()
    s.commit("g", {0: 0, 1: 0}, process="setup")
    before = s.history.last_index()
    s.commit("g", {0: 2})
    s.group_assign("g1", {0: 0}, since=before)
    assert checkers.committed_offsets(s.events).verdict == "pass"


def test_a_committed_offset_above_the_log_end_fails() -> None:
    s = good_run()  # the drain ends at 3 on both partitions
    s.commit("g", {0: 3})
    assert checkers.committed_offsets(s.events).verdict == "pass"
    s.commit("g", {1: 4})
    verdict = checkers.committed_offsets(s.events)
    assert verdict.failed and verdict.details["above_log_end"] == 1


def group_reads() -> Script:
    """Partition 0 holds values 0, 2, 4, ... at offsets 0, 1, 2, ...; two members of group g."""
    s = good_run()
    s.join("g0")
    s.join("g1")
    s.commit("g", {0: 0, 1: 0}, process="setup")
    s.group_assign("g0", {0: 0, 1: 0})
    s.poll("g0", 0, [[0, 0, 0], [0, 1, 2], [1, 0, 1]])
    s.commit("g", {0: 2, 1: 1})
    s.poll("g0", 0, [[0, 2, 4]])  # read, not yet committed
    s.commit("g", {1: 1}, process="g0")
    s.revoke("g0", [0])
    s.group_assign("g1", {0: 2})  # resumes at the committed offset: 0/2 is read again
    s.poll("g1", 0, [[0, 2, 4]])
    return s


def test_group_members_read_in_order_and_may_reread_after_a_revoke() -> None:
    s = group_reads()
    verdicts = {v.name: v for v in checkers.check_all(s.events, GOOD_DUMP)}
    assert verdicts["consumer_order"].verdict == "pass", verdicts["consumer_order"].details
    assert verdicts["committed_offsets"].verdict == "pass", verdicts["committed_offsets"].details
    assert verdicts["group_ownership"].verdict == "pass", verdicts["group_ownership"].details


def test_a_group_member_skipping_or_going_back_within_one_ownership_fails() -> None:
    s = group_reads()
    s.poll("g1", 0, [[0, 4, 8]])  # expected 0/3
    verdict = checkers.consumer_order(s.events)
    assert verdict.failed and verdict.details["skips"] == 1
    s = group_reads()
    s.poll("g1", 0, [[0, 0, 0]])
    verdict = checkers.consumer_order(s.events)
    assert verdict.failed and verdict.details["backwards"] == 1


def test_a_new_owner_starting_above_what_the_group_read_fails() -> None:
    s = group_reads()
    s.revoke("g1", [0])
    s.group_assign("g0", {0: 5})  # the group read 0/0..0/2: 0/3 and 0/4 would never be read
    verdict = checkers.consumer_order(s.events)
    assert verdict.failed and verdict.details["group_starts_above_read_frontier"] == 1
    assert verdict.details["examples"][0][2:5] == [0, 3, 5]


def test_a_member_reading_a_partition_it_does_not_own_fails() -> None:
    s = group_reads()
    s.poll("g0", 0, [[0, 3, 6]])  # g0 gave partition 0 up
    verdict = checkers.consumer_order(s.events)
    assert verdict.failed and verdict.details["reads_of_unowned_partitions"] == 1


def test_two_owners_at_once_fail_when_the_old_owner_still_commits() -> None:
    s = group_reads()
    s.group_assign("g0", {0: 3})  # g1 still owns partition 0
    s.commit("g", {0: 3}, process="g1")  # ... and the coordinator still takes its commits
    s.revoke("g1", [0])
    verdict = checkers.group_ownership(s.events)
    assert verdict.failed and verdict.details["two_owners"] == 1
    assert verdict.details["examples"][0][:4] == ["g", 0, "g1", "g0"]


def test_an_overlap_with_a_fenced_old_owner_is_tolerated() -> None:
    s = group_reads()
    s.group_assign("g0", {0: 3})
    s.revoke("g1", [0], reason="lost")  # g1 learns late that the coordinator removed it
    verdict = checkers.group_ownership(s.events)
    assert verdict.verdict == "pass" and verdict.details["tolerated_fenced_owner"] == 1
    s = group_reads()
    s.group_assign("g0", {0: 3})
    s.commit("g", {0: 3}, process="g1", outcome="fail", error="COMMIT_FAILED")
    s.revoke("g1", [0], reason="close")
    verdict = checkers.group_ownership(s.events)
    assert verdict.verdict == "pass" and verdict.details["tolerated_fenced_owner"] == 1
    # Without evidence either way the overlap is reported, not judged.
    s = group_reads()
    s.group_assign("g0", {0: 3})
    s.commit("g", {0: 3}, process="g1", outcome="info", error="KAFKA_TIMEOUT")
    s.revoke("g1", [0])
    verdict = checkers.group_ownership(s.events)
    assert verdict.verdict == "pass" and verdict.details["unresolved"] == 1


def test_replicas_that_differ_below_the_high_watermark_fail() -> None:
    dump = dump_of({0: [0, 2, 4], 1: [1, 3, 5]})
    del dump[3][0]["records"][2]  # node 3 lacks 0/2
    verdict = checkers.replicas_agree(good_run().events, dump)
    assert verdict.failed and verdict.details["examples"][0][:4] == [3, 0, 1, 0]
    dump = dump_of({0: [0, 2, 4], 1: [1, 3, 5]})
    dump[1][1]["records"][0] = [0, 77]
    assert checkers.replicas_agree(good_run().events, dump).failed
    assert checkers.replicas_agree(good_run().events, None).verdict == "unknown"


def test_only_the_replicas_of_a_partition_are_compared() -> None:
    s = good_run()
    s.history.ok("nemesis", "start", {"replicas": [[0, [1, 2]], [1, [2, 3]]]})
    dump = dump_of({0: [0, 2, 4], 1: [1, 3, 5]})
    del dump[3][0]
    dump[1][1]["records"] = []  # node 1 is no replica of partition 1: its store is not judged
    assert checkers.replicas_agree(s.events, dump).verdict == "pass"
    del dump[2][1]  # node 2 is a replica of partition 1 and lost it
    verdict = checkers.replicas_agree(s.events, dump)
    assert verdict.failed and verdict.details["examples"][0][:3] == [2, 1, 3]


def test_a_high_watermark_going_down_within_one_epoch_of_one_process_fails() -> None:
    s = good_run()
    s.hw(0, 1, 2)  # node 1 incarnation 1 said 3 at epoch 1 before
    verdict = checkers.high_watermarks(s.events)
    assert verdict.failed and verdict.details["decreases_within_epoch"] == 1


def test_high_watermark_decreases_across_epochs_or_restarts_are_counted_not_failed() -> None:
    s = good_run()
    s.hw(0, 2, 2, node=2)  # a new leader starting from its own checkpoint
    s.hw(0, 1, 3)  # a stale answer from the old leader
    s.hw(0, 2, 1, node=2, incarnation=2)  # node 2 restarted, same epoch
    verdict = checkers.high_watermarks(s.events)
    assert verdict.verdict == "pass", verdict.details
    assert verdict.details["lower_at_new_epoch"] == 1
    assert verdict.details["stale_epoch_answers"] == 1
    assert verdict.details["lower_after_restart_same_epoch"] == 1
    s.hw(0, 2, 2, node=2, incarnation=2)
    assert checkers.high_watermarks(s.events).verdict == "pass"
    s.hw(0, 2, 1, node=2, incarnation=2)  # the restarted process itself goes down
    assert checkers.high_watermarks(s.events).failed


def test_recovery_fails_when_the_cluster_did_not_heal_or_the_drain_stopped_short() -> None:
    s = good_run()
    s.history.info("nemesis", "recovered", {"seconds": 90.0}, error="timed out")
    assert checkers.recovery(s.events).failed
    s = Script()
    s.history.ok("nemesis", "recovered", {"seconds": 1.0})
    s.drain({0: [0]}, complete=False)
    assert checkers.recovery(s.events).failed


def test_summary_counts_and_heal_to_writable() -> None:
    s = good_run()
    summary = checkers.summarize(s.events)
    assert summary == {**summary, "sent": 8, "acknowledged": 6, "failed": 1, "info": 1, "read": 6, "lost": 0}
    s.history.info("nemesis", "heal", {"fault": 0})
    healed_at = s.events[-1]["time"]
    s.send(8, 0, offset=3)
    s.send(9, 1, offset=3)
    heals = checkers.heal_to_writable(s.events)
    assert len(heals) == 1 and heals[0]["writable_after_s"] == pytest.approx(0.2)
    assert heals[0]["all_partitions_after_s"] == pytest.approx(0.4)
    assert heals[0]["heal_s"] == healed_at
    figures = checkers.heal_figures(heals)
    assert figures["p50_s"] == pytest.approx(0.2) and figures["heals"] == 1


def test_history_file_round_trip_and_value_codec(tmp_path) -> None:
    history = History(tmp_path / "h.jsonl")
    history.invoke("p0", "send", 5, partition=1)
    history.ok("p0", "send", 5, partition=1, offset=0)
    history.close()
    assert load(tmp_path / "h.jsonl") == history.events
    assert decode_value(encode_value(17)) == 17
    assert decode_value(encode_value(17, padding_bytes=10)) == 17
    assert decode_value(b"not a number") == "not a number"
