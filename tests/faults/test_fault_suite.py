"""The CI tier of the fault suite: 3 nodes, two fixed seeds with network partitions (each
node in its own namespace), and a loopback run with kill and pause only.

Every checker must pass. A failing run keeps its history, report, dump and node logs and
the assertion message names the directory."""

from __future__ import annotations

import pytest

from tests.faults.netns import namespaces_available
from tests.faults.runner import RunOptions, RunResult, format_report, run
from tests.faults.schedule import NETWORK_KINDS, PROCESS_KINDS, make_schedule

# Seed 2: kill, pause, one-way, bridge, one-way; seed 25: isolate, pause, kill, bridge,
# kill, pause (in 50 s of load).
CI_SEEDS = (2, 25)
CI_DURATION_S = 50.0
LOOPBACK_SEED = 5
LOOPBACK_DURATION_S = 25.0  # seed 5: pause, then kill -9


@pytest.fixture(scope="module")
def namespaces() -> None:
    available, why = namespaces_available()
    if not available:
        pytest.skip(f"network-partition faults skipped: network namespaces unavailable ({why}); "
                    "the loopback run still covers kill and pause")


def judge(result: RunResult, options: RunOptions) -> None:
    report = format_report(result, options)
    print("\n" + report)
    assert result.summary["acknowledged"] > 0 and result.summary["read"] > 0, report
    assert result.summary["commits"] > 0 and result.summary["committed_probes"] > 0, report
    # The faults actually injected (a slow restart may delay the rest of the schedule past
    # the end of the load) include a process fault and, with namespaces, a network fault.
    injected = [entry["kind"] for entry in result.timeline]
    planned = make_schedule(options.seed, options.duration_s, options.nodes, options.netns)
    assert injected == [plan.kind for plan in planned[:len(injected)]], report  # the seed's schedule, in order
    assert set(injected) & set(PROCESS_KINDS), report
    assert set(injected) & set(NETWORK_KINDS) or not options.netns, report
    assert result.passed, report


@pytest.mark.timeout(240)
@pytest.mark.parametrize("seed", CI_SEEDS)
def test_fault_run_with_network_partitions(namespaces: None, seed: int) -> None:
    options = RunOptions(seed=seed, duration_s=CI_DURATION_S, nodes=3, netns=True)
    kinds = {plan.kind for plan in make_schedule(seed, CI_DURATION_S, 3, True)}
    assert kinds & set(NETWORK_KINDS) and kinds & set(PROCESS_KINDS)
    judge(run(options), options)


@pytest.mark.timeout(180)
def test_fault_run_on_loopback_with_kill_and_pause() -> None:
    options = RunOptions(seed=LOOPBACK_SEED, duration_s=LOOPBACK_DURATION_S, nodes=3, netns=False)
    judge(run(options), options)
