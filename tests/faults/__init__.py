"""The fault-injection suite: real node processes, a seeded nemesis, a history, checkers.

``python -m tests.faults run --seed N --duration-s S`` starts a cluster (each node in its own
network namespace unless ``--no-netns``), runs producers, a consumer group, a prober of its
committed offsets and high-watermark probers while the nemesis kills, pauses and partitions
nodes, then heals, drains, dumps every replica and judges the history. Layout, bottom up:

* ``history``  — the JSON-lines operation log (invoke / ok / fail / info) and its reader;
* ``schedule`` — the seeded fault plan and how a planned fault becomes concrete node sets;
* ``netns``    — namespaces, veth pairs, a bridge and blackhole routes (or plain loopback);
* ``nodes``    — node processes inside those namespaces, cluster probes, replica dumps;
* ``workload`` — producer, group member, offsets and high-watermark workers that write the history;
* ``checkers`` — pure verdicts over the history and the replica dump, and run figures;
* ``runner``   — one whole run: set up, load + nemesis, heal, drain, dump, check, report.
"""
