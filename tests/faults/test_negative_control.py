"""The negative control: damage every replica of one partition on purpose and show that the
lost-write checker reports the loss. A checker that cannot fail proves nothing."""

from __future__ import annotations

import pytest

from tests.faults.nodes import log_end_offsets, truncate_partition
from tests.faults.runner import RunContext, RunOptions, format_report, run

DAMAGED_PARTITION = 0
LOAD_S = 8.0


@pytest.mark.timeout(150)
def test_truncating_every_replica_of_a_partition_makes_the_lost_write_checker_fail(tmp_path) -> None:
    cut: list[int] = []

    def damage(context: RunContext) -> None:
        context.cluster.kill_all()
        stores = [node.data_dir / "log" for node in context.cluster.nodes.values()]
        ends = [log_end_offsets(store)[DAMAGED_PARTITION] for store in stores]
        cut.append(min(ends) // 2)
        for store in stores:
            truncate_partition(store, DAMAGED_PARTITION, cut[0])
        # A batch straddling the cut goes whole, so the logs may end a little below it.
        cut[0] = min(log_end_offsets(store)[DAMAGED_PARTITION] for store in stores)
        context.history.info("nemesis", "damage", {"partition": DAMAGED_PARTITION, "truncated_to": cut[0],
                                                   "log_end_offsets": ends})

    options = RunOptions(seed=0, duration_s=LOAD_S, netns=False, faults=False, keep_dir=tmp_path / "run",
                         after_load=damage)
    result = run(options)
    report = format_report(result, options)
    print("\n" + report)
    assert cut and cut[0] > 0, report
    assert result.verdict("recovery").verdict == "pass", report  # the damaged cluster still healed and drained
    lost = result.verdict("lost_writes")
    assert lost.failed, report
    assert lost.details["lost"] > 0
    for value, partition, offset in lost.details["lost_examples"]:
        assert partition == DAMAGED_PARTITION and offset >= cut[0], (value, partition, offset)
    assert not result.passed
