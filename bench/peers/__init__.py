"""Peer systems the benchmark starts beside kraft, to print same-run ratios against them.

Theory of operation
-------------------
A peer runs a kraft workload (``bench.workload``) on another system, started by the same
script on the same machine, with its own load generators that follow the report protocol
of ``bench.workers``, so ``bench.harness.run_phases`` drives them on the same timeline and
with the same stop rule as kraft's. A peer is optional: when its packages are missing it
is skipped with one line saying which.

- ``bench.peers.nats_jetstream``: NATS JetStream, one server with R1 streams and a
  3-server cluster with R3 streams (``nats_server`` starts the servers, ``nats_workers``
  are the producer and consumer processes).
"""
