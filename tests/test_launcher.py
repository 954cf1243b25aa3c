"""``cluster.launcher.NodeProcess``: a node that never becomes ready is not left running."""

from __future__ import annotations

import pytest

from cluster.launcher import NodeProcess, free_port

pytestmark = pytest.mark.timeout(60)


def test_a_node_that_never_answers_is_killed_when_start_gives_up(tmp_path) -> None:
    # The node listens on another port than the one the launcher polls: it runs, but is
    # never seen ready, so start() times out while the process is alive.
    node = NodeProcess(tmp_path / "node", {"listeners": f"127.0.0.1:{free_port()}"}, port=free_port())
    try:
        with pytest.raises(TimeoutError):
            node.start(timeout_s=2.0)
        assert node.process is not None
        assert node.process.poll() is not None, "the node was left running after start() gave up"
    finally:
        if node.running:
            node.kill9()
