"""The consumer's fetcher: a background thread that keeps record batches buffered ahead of ``poll``.

Theory of operation
-------------------
The fetcher thread loops over the assigned partitions (``SubscriptionState``) that have a
fetch position, are not paused or backing off, and have less than
``max_partition_fetch_bytes`` buffered. It groups them by leader and sends one Fetch
request per broker (at most one in flight per broker, on the fetch channel so long polls
never delay other requests), then sleeps until a response, a ``poll`` that freed buffer
space, or an assignment change wakes it. The request long-polls (``fetch_max_wait_ms``)
only when nothing of that broker's partitions is buffered: otherwise a partition that
reached its end would hold the connection while the others run out of records.

A response (handled on the connection's reader thread) is checked against the partition's
generation and fetch position at the time of the request, so data fetched before a seek
is dropped. Good data is split into batches (``storage.batch.split_batches``, no record
decoding) and appended to the partition's buffer as a ``CompletedFetch``; the fetch
position moves past the last batch, so the next fetch can go out while ``poll`` works.
OFFSET_OUT_OF_RANGE at the application's position resets it (``auto_offset_reset``) or,
with ``"none"``, stores the error for ``poll`` to raise; errors that say the leader moved
refresh the metadata; every error backs the partition off for ``retry_backoff_ms``.

``collect`` (called by ``poll`` in the application's thread) decodes batches lazily with
``storage.batch.decode_columns`` into columns (offsets, timestamps, keys, values, headers:
no object per record but msgpack's own), without the records below the position (a batch
may start before it), takes at most ``max_records`` records, partitions in turn, and moves
each position past exactly the records it takes. Each partition's records are handed out
as a ``PartitionRecords`` over those columns (a batch taken in part, as a slice of them),
which builds the ``ConsumerRecord`` tuples only when the application reads them. Buffered
bytes are released as batches are decoded, which is what lets the next fetch go out. All
state is guarded by the subscription's lock.
"""

from __future__ import annotations

import collections
import gc
import logging
import threading
import time
from typing import Any

from cluster.client import errors
from cluster.client.network import CHANNEL_FETCH, NetworkClient
from cluster.client.structs import PartitionRecords, TopicPartition
from cluster.client.subscription import RESET_NONE, SubscriptionState
from cluster.protocol.api import CONSUMER_REPLICA_ID, ApiKey
from storage.batch import CONTROL_FLAG, CorruptBatchError, RecordColumns, decode_columns, parse_header, split_batches

log = logging.getLogger(__name__)

IDLE_WAIT_S_MAX = 1.0
# The node's wait for a fetch while other partitions of the same node still have buffered
# records: a long poll would hold the connection, and those partitions' next fetch, for
# fetch_max_wait_ms; a short one only rate-limits fetches of idle partitions.
SHORT_POLL_WAIT_MS = 10


class _CollectorPaused:
    """Pause the cyclic garbage collector while ``poll`` decodes records.

    Decoding a msgpack batch allocates a tuple per record (msgpack's row, freed once the
    rows are transposed into columns), none of which can be part of a cycle. Left running,
    the collector makes a generation-0 pass every 700 allocations, walking rows that are
    about to die, and those passes trigger passes of the older generations, which walk
    everything the application holds. The pause covers the decoding of at most
    ``max_records`` records; an application that turned the collector off keeps it off.
    """

    __slots__ = ("paused",)

    def __enter__(self) -> None:
        self.paused = gc.isenabled()
        if self.paused:
            gc.disable()

    def __exit__(self, *exc_info: object) -> None:
        if self.paused:
            gc.enable()


class CompletedFetch:
    """The batches one fetch returned for one partition, consumed front to back."""

    __slots__ = ("generation", "batches", "batch_index", "columns", "record_index", "batch_next_offset")

    def __init__(self, generation: int, batches: list[memoryview]) -> None:
        self.generation = generation
        self.batches = batches
        self.batch_index = 0
        self.columns: RecordColumns | None = None  # the batch being taken, decoded
        self.record_index = 0  # the place in ``columns`` of the next record to take
        self.batch_next_offset = -1

    def remaining_bytes(self) -> int:
        return sum(len(b) for b in self.batches[self.batch_index:])


class Fetcher:
    def __init__(
        self,
        client: NetworkClient,
        subscriptions: SubscriptionState,
        *,
        fetch_min_bytes: int,
        fetch_max_wait_ms: int,
        fetch_max_bytes: int,
        max_partition_fetch_bytes: int,
        retry_backoff_ms: int,
    ) -> None:
        self.client = client
        self.subs = subscriptions
        self.fetch_min_bytes = fetch_min_bytes
        self.fetch_max_wait_ms = fetch_max_wait_ms
        self.fetch_max_bytes = fetch_max_bytes
        self.max_partition_fetch_bytes = max_partition_fetch_bytes
        self.retry_backoff_s = retry_backoff_ms / 1000
        self.buffer_bytes_max = fetch_max_bytes
        self._lock = subscriptions.lock
        # One collect at a time: collect lets go of the subscription lock while it decodes.
        self._collect_lock = threading.Lock()
        self._buffers: dict[TopicPartition, collections.deque[CompletedFetch]] = {}
        self._buffered_bytes: dict[TopicPartition, int] = {}
        self._total_buffered_bytes = 0
        self._in_flight_nodes: set[int] = set()
        self._in_flight_tps: set[TopicPartition] = set()
        self._turn = 0
        self._running = True
        self.metadata_version_seen = -1
        self._thread = threading.Thread(target=self._run, name="kraft-consumer-fetcher", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        with self._lock:
            self._running = False
            self.subs.fetcher_wakeup.notify_all()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout=5)

    # -- the fetch loop -------------------------------------------------------------------

    def _run(self) -> None:
        try:
            while self._run_once():
                pass
        except Exception:
            log.exception("consumer fetcher thread failed")

    def _run_once(self) -> bool:
        topics = self.subs.topics_of_interest()
        try:
            if topics and self.client.maybe_refresh_metadata(topics):
                with self._lock:
                    self.subs.data_ready.notify_all()  # poll may need to update the assignment
        except errors.KraftError as exc:  # keep fetching what the metadata already knows
            log.warning("metadata refresh failed: %s", exc)
        metadata = self.client.metadata
        now_s = time.monotonic()
        requests: dict[int, list[tuple[TopicPartition, int, int]]] = {}
        with self._lock:
            if not self._running:
                return False
            wait_s = IDLE_WAIT_S_MAX
            leader_unknown = False
            busy_nodes: set[int] = set()
            for tp, state in self.subs.assignment.items():
                if state.fetch_position is None or state.paused:
                    continue
                leader = metadata.leader_for(tp.topic, tp.partition)
                if leader < 0:
                    leader_unknown = True
                    continue
                if self._buffered_bytes.get(tp, 0) > 0:
                    busy_nodes.add(leader)
                if tp in self._in_flight_tps or leader in self._in_flight_nodes:
                    continue
                if state.backoff_until_s > now_s:
                    wait_s = min(wait_s, state.backoff_until_s - now_s)
                    continue
                self._drop_stale(tp, state.generation)
                if self._buffered_bytes.get(tp, 0) >= self.max_partition_fetch_bytes:
                    continue
                if self._total_buffered_bytes >= self.buffer_bytes_max:
                    continue
                requests.setdefault(leader, []).append((tp, state.fetch_position, state.generation))
            for node, parts in requests.items():
                self._in_flight_nodes.add(node)
                self._in_flight_tps.update(tp for tp, _, _ in parts)
            if not requests:
                if leader_unknown:
                    metadata.request_update()
                    wait_s = min(wait_s, max(0.01, metadata.refresh_due_in_ms(now_s * 1000) / 1000))
                self.subs.fetcher_wakeup.wait(wait_s)
                return self._running
        for node, parts in requests.items():
            self._send_fetch(node, parts, SHORT_POLL_WAIT_MS if node in busy_nodes else self.fetch_max_wait_ms)
        return True

    def _send_fetch(self, node: int, parts: list[tuple[TopicPartition, int, int]], max_wait_ms: int) -> None:
        topics: dict[str, list[dict[str, Any]]] = {}
        for tp, offset, _ in parts:
            topics.setdefault(tp.topic, []).append({
                "index": tp.partition, "fetch_offset": offset,
                "partition_max_bytes": self.max_partition_fetch_bytes, "current_leader_epoch": -1})
        body = {
            "replica_id": CONSUMER_REPLICA_ID, "max_wait_ms": min(max_wait_ms, self.fetch_max_wait_ms),
            "min_bytes": self.fetch_min_bytes, "max_bytes": self.fetch_max_bytes,
            "topics": [{"name": name, "partitions": ps} for name, ps in topics.items()],
        }
        future = self.client.send(node, ApiKey.FETCH, body, channel=CHANNEL_FETCH)
        future.add_callback(lambda f: self._on_response(node, parts, f))

    def _on_response(self, node: int, parts: list[tuple[TopicPartition, int, int]], future: Any) -> None:
        now_s = time.monotonic()
        refresh = False
        with self._lock:
            self._in_flight_nodes.discard(node)
            self._in_flight_tps.difference_update(tp for tp, _, _ in parts)
            body: dict[str, Any] = future.value if future.error is None else {}
            whole_error = future.error
            if body.get("error_code", 0) and "topics" not in body:
                whole_error = errors.error_for_code(body["error_code"], body.get("error_message"))
            results: dict[tuple[str, int], dict] = {}
            if whole_error is None:
                for topic in body.get("topics", ()):
                    for p in topic.get("partitions", ()):
                        results[(topic["name"], p["index"])] = p
            for tp, offset, generation in parts:
                state = self.subs.assignment.get(tp)
                if state is None or state.generation != generation or state.fetch_position != offset:
                    continue  # seeked, reset or unassigned while the fetch was in flight
                if whole_error is not None:
                    state.backoff_until_s = now_s + self.retry_backoff_s
                    refresh = refresh or getattr(whole_error, "invalid_metadata", False)
                    if not getattr(whole_error, "retriable", False):
                        state.error = whole_error
                    continue
                p = results.get((tp.topic, tp.partition))
                if p is None:
                    continue
                code = p.get("error_code", 0)
                if code == errors.NONE:
                    state.high_watermark = p.get("high_watermark", -1)
                    state.log_start_offset = p.get("log_start_offset", -1)
                    records = p.get("records") or b""
                    if records:
                        self._buffer(tp, state, generation, records)
                elif code == errors.OFFSET_OUT_OF_RANGE:
                    self._out_of_range(tp, state, offset, p)
                else:
                    error = errors.error_for_code(code, f"fetching {tp.topic}-{tp.partition} at offset {offset}")
                    refresh = refresh or error.invalid_metadata
                    state.backoff_until_s = now_s + self.retry_backoff_s
                    if not error.retriable:
                        state.error = error
            self.subs.fetcher_wakeup.notify_all()
        if refresh:
            self.client.metadata.request_update()

    def _buffer(self, tp: TopicPartition, state: Any, generation: int, records: bytes) -> None:
        try:
            batches = split_batches(records)
            next_offset = parse_header(batches[-1]).next_offset
        except CorruptBatchError as exc:
            state.error = errors.CorruptMessageError(f"{tp.topic}-{tp.partition}: {exc}")
            state.backoff_until_s = time.monotonic() + self.retry_backoff_s
            return
        size = len(records)
        queue = self._buffers.get(tp)
        if queue is None:
            queue = self._buffers[tp] = collections.deque()
        queue.append(CompletedFetch(generation, batches))
        self._buffered_bytes[tp] = self._buffered_bytes.get(tp, 0) + size
        self._total_buffered_bytes += size
        state.fetch_position = max(next_offset, state.fetch_position or 0)
        self.subs.data_ready.notify_all()

    def _out_of_range(self, tp: TopicPartition, state: Any, offset: int, p: dict) -> None:
        if offset != state.position:
            # A prefetch ran past what the log holds now: fetch again from the position.
            state.generation += 1
            state.fetch_position = state.position
            return
        strategy = state.reset_strategy or self.subs.default_reset
        if strategy == RESET_NONE:
            state.error = errors.OffsetOutOfRangeError(
                f"offset {offset} of {tp.topic}-{tp.partition} is outside the log "
                f"[{p.get('log_start_offset')}, {p.get('high_watermark')}] and auto_offset_reset is 'none'")
            state.fetch_position = None
        else:
            log.info("offset %d of %s-%d out of range; resetting to %s", offset, tp.topic, tp.partition, strategy)
            state.position = None
            state.fetch_position = None
            state.reset_strategy = strategy
            state.generation += 1
        self.subs.data_ready.notify_all()

    def _drop_stale(self, tp: TopicPartition, generation: int) -> None:
        queue = self._buffers.get(tp)
        while queue and queue[0].generation != generation:
            self._release(tp, queue.popleft().remaining_bytes())

    def _release(self, tp: TopicPartition, size: int) -> None:
        if size:
            self._buffered_bytes[tp] -= size
            self._total_buffered_bytes -= size

    # -- handing records to poll ----------------------------------------------------------

    def has_buffered(self) -> bool:
        with self._lock:
            return any(self._buffers.values())

    def collect(self, max_records: int) -> dict[TopicPartition, PartitionRecords]:
        """Up to ``max_records`` buffered records, partitions in turn; advances positions."""
        out: dict[TopicPartition, PartitionRecords] = {}
        with self._collect_lock, self._lock, _CollectorPaused():
            tps = [tp for tp, queue in self._buffers.items() if queue]
            if not tps:
                return out
            self._turn = (self._turn + 1) % len(tps)
            tps = tps[self._turn:] + tps[:self._turn]
            assignment = self.subs.assignment
            remaining = max_records
            freed = False
            for tp in tps:
                state = assignment.get(tp)
                queue = self._buffers[tp]
                if state is None:
                    while queue:
                        self._release(tp, queue.popleft().remaining_bytes())
                    freed = True
                    continue
                if state.paused or state.position is None:
                    continue
                chunks = self._drain(tp, state, queue, remaining)
                freed = True
                if chunks:
                    records = out[tp] = PartitionRecords(tp.topic, tp.partition, chunks)
                    remaining -= len(records)
                    if remaining <= 0:
                        break
            if freed:
                self.subs.fetcher_wakeup.notify_all()
        return out

    def _unchanged(self, tp: TopicPartition, state: Any, generation: int) -> bool:
        """Whether ``state`` is still the partition's and at ``generation`` (no seek, reset
        or reassignment happened while the lock was let go)."""
        return state.generation == generation and self.subs.assignment.get(tp) is state

    def _drain(self, tp: TopicPartition, state: Any, queue: collections.deque[CompletedFetch],
               limit: int) -> list[RecordColumns]:
        """Up to ``limit`` records of ``tp``'s buffer, as columns, in offset order; moves the
        position past them."""
        taken: list[RecordColumns] = []
        position: int = state.position
        while queue and limit > 0:
            fetch = queue[0]
            if fetch.generation != state.generation:
                self._release(tp, queue.popleft().remaining_bytes())
                continue
            columns = fetch.columns
            if columns is None:
                if fetch.batch_index >= len(fetch.batches):
                    queue.popleft()
                    continue
                batch = fetch.batches[fetch.batch_index]
                fetch.batch_index += 1
                self._release(tp, len(batch))
                generation = state.generation
                try:
                    header = parse_header(batch)
                    if header.next_offset <= position:
                        continue
                    if header.attributes & CONTROL_FLAG:
                        position = max(position, header.next_offset)
                        continue
                    # Decode without the lock, so that the fetcher can buffer the next
                    # response and send the next fetch meanwhile.
                    self._lock.release()
                    try:
                        columns = decode_columns(batch, position)
                    finally:
                        self._lock.acquire()
                except CorruptBatchError as exc:
                    if not self._unchanged(tp, state, generation):
                        return taken  # seeked, reset or unassigned meanwhile: the position is not ours
                    state.error = errors.CorruptMessageError(f"{tp.topic}-{tp.partition}: {exc}")
                    state.fetch_position = position
                    state.generation += 1
                    break
                if not self._unchanged(tp, state, generation):
                    return taken  # seeked, reset or unassigned meanwhile: the position is not ours
                if columns is None:
                    position = max(position, header.next_offset)
                    continue
                fetch.columns = columns
                fetch.record_index = 0
                fetch.batch_next_offset = header.next_offset
            start = fetch.record_index
            count = len(columns)
            end = min(count, start + limit)
            if end == count:
                taken.append(columns if start == 0 else columns.slice(start, end))
                fetch.columns = None
                position = max(columns.offsets[-1] + 1, fetch.batch_next_offset)
            else:
                taken.append(columns.slice(start, end))
                fetch.record_index = end
                position = columns.offsets[end - 1] + 1
            limit -= end - start
        state.position = position
        return taken
