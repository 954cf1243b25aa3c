"""Consumer group membership, member side: the heartbeat protocol of KIP-848 style groups.

Theory of operation
-------------------
A consumer with a ``group_id`` and a subscription is a member of its group; the group's
coordinator (the active controller) decides which partitions each member reads. Three
pieces live here:

* ``MembershipState`` — pure decision logic, no I/O, no clock: the member id and epoch,
  the subscription, the partitions the member owns (what the application has
  reconciled), the target assignment the coordinator sent, and the state machine below.
  It builds the next heartbeat (``heartbeat_request(now_ms)``), says when one is due, and
  applies the coordinator's answers. Time comes in as ``now_ms``.
* ``CoordinatorClient`` — finds the coordinator (FindCoordinator, again after
  NOT_COORDINATOR, COORDINATOR_NOT_AVAILABLE or a lost connection) and sends group
  requests to it, retrying those errors until a deadline. The consumer's OffsetCommit and
  OffsetFetch and the admin's group requests go through it too.
* ``MembershipManager`` — the shell: one background thread that sends the heartbeats the
  state asks for, one at a time, feeds the answers back, and wakes the application's
  ``poll`` when there is something to reconcile.

Data flow. The heartbeat thread stores each assignment the coordinator sends as the
*target*. The application thread, inside ``Consumer.poll``, compares target and owned:
it revokes what left (commit, ``on_partitions_revoked``, stop fetching), adds what came
(committed offsets, ``on_partitions_assigned``) and calls ``reconciled(owned)``. That
marks the owned set changed, so a heartbeat goes out at once and reports it: the
coordinator hands a partition to another member only after its owner stopped listing it.
A subscription or owned set is sent only when it changed since the last heartbeat that
succeeded; after any failed heartbeat the next one carries both again.

States (``_TRANSITIONS`` holds every move but the leave, whose next state is chosen by
whoever asks for it: ``leave()`` and ``_finish_leave``)::

    UNSUBSCRIBED --subscribe--> JOINING --heartbeat ok--> STABLE
    JOINING, STABLE --UNKNOWN_MEMBER_ID / FENCED_MEMBER_EPOCH--> FENCED
    JOINING, STABLE --no poll() for max_poll_interval_ms--> LEAVING --> STALE
    FENCED, STALE --released (poll gave up every partition)--> JOINING
    any but CLOSED --leave (close / unsubscribe)--> LEAVING --> CLOSED | UNSUBSCRIBED
    JOINING, STABLE --a non-retriable error--> FATAL

FENCED and STALE wait for the application: its partitions may already belong to another
member, so ``poll`` must give them up (``on_partitions_lost``, no commit) before the member
joins again with epoch 0. A leave is one heartbeat with epoch -1 (-2 for a static member,
closing, whose partitions the coordinator keeps for it until its session times out); its
answer is not waited for beyond one request.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any, Callable, Iterable

from cluster.client import errors
from cluster.client.connection import BrokerConnection, ResponseFuture, check_body_error, failed_future
from cluster.client.network import NetworkClient
from cluster.client.structs import TopicPartition
from cluster.protocol.api import (
    COORDINATOR_KEY_TYPE_GROUP,
    JOIN_GROUP_MEMBER_EPOCH,
    LEAVE_GROUP_MEMBER_EPOCH,
    LEAVE_GROUP_STATIC_MEMBER_EPOCH,
    ApiKey,
)

log = logging.getLogger(__name__)

UNSUBSCRIBED = "unsubscribed"
JOINING = "joining"
STABLE = "stable"
FENCED = "fenced"
LEAVING = "leaving"
STALE = "stale"
FATAL = "fatal"
CLOSED = "closed"

# (state, event) -> next state. LEAVING's successor is chosen by whoever asked to leave.
_TRANSITIONS: dict[tuple[str, str], str] = {
    (UNSUBSCRIBED, "subscribe"): JOINING,
    (JOINING, "joined"): STABLE,
    (JOINING, "fenced"): FENCED,
    (STABLE, "fenced"): FENCED,
    (JOINING, "poll_timeout"): LEAVING,
    (STABLE, "poll_timeout"): LEAVING,
    (FENCED, "released"): JOINING,
    (STALE, "released"): JOINING,
    (JOINING, "fatal"): FATAL,
    (STABLE, "fatal"): FATAL,
}
_LEAVE_FROM = (UNSUBSCRIBED, JOINING, STABLE, FENCED, STALE, FATAL)
_HEARTBEATING = (JOINING, STABLE, LEAVING)

# Errors that say "ask FindCoordinator again": the request was not handled.
COORDINATOR_ERROR_CODES = frozenset({
    errors.NOT_COORDINATOR, errors.COORDINATOR_NOT_AVAILABLE, errors.COORDINATOR_LOAD_IN_PROGRESS})
FENCING_ERROR_CODES = frozenset({errors.UNKNOWN_MEMBER_ID, errors.FENCED_MEMBER_EPOCH})

DEFAULT_HEARTBEAT_INTERVAL_MS = 3000  # until the coordinator names its own
RETRY_BACKOFF_MS_MAX = 1000
LEAVE_TIMEOUT_MS_MAX = 5000  # close() waits at most this long for the leave heartbeat
CHANNEL_HEARTBEAT = "group-heartbeat"  # heartbeats never queue behind a commit
CHANNEL_GROUP = "group"


def topic_partitions_to_wire(tps: Iterable[TopicPartition]) -> list[dict[str, Any]]:
    """``[{"topic", "partitions"}]`` sorted by topic, partitions sorted (the contract's form)."""
    by_topic: dict[str, list[int]] = {}
    for tp in tps:
        by_topic.setdefault(tp.topic, []).append(tp.partition)
    return [{"topic": topic, "partitions": sorted(ps)} for topic, ps in sorted(by_topic.items())]


def topic_partitions_from_wire(items: Iterable[dict[str, Any]] | None) -> frozenset[TopicPartition]:
    return frozenset(TopicPartition(item["topic"], p) for item in items or () for p in item.get("partitions", ()))


def coordinator_error(body: dict[str, Any]) -> int:
    """The coordinator error of a group response (top level or any item), or 0.

    A node that is not the coordinator answers every item with the same code, so one such
    code anywhere means the whole request was sent to the wrong node.
    """
    code = body.get("error_code", 0)
    if code in COORDINATOR_ERROR_CODES:
        return code
    for value in body.values():
        if isinstance(value, list):
            for item in value:
                if isinstance(item, dict):
                    found = coordinator_error(item)
                    if found:
                        return found
    return 0


class MembershipState:
    """The member's side of the group protocol as a state machine. Not thread-safe: the
    manager guards it with its lock."""

    def __init__(
        self,
        group_id: str,
        *,
        client_id: str,
        session_timeout_ms: int,
        rebalance_timeout_ms: int,
        instance_id: str | None = None,
        rack_id: str | None = None,
        retry_backoff_ms: int = 100,
        now_ms: float = 0.0,
    ) -> None:
        assert group_id, "a group member needs a group id"
        self.group_id = group_id
        self.client_id = client_id
        self.session_timeout_ms = session_timeout_ms
        self.rebalance_timeout_ms = rebalance_timeout_ms  # also the max poll interval
        self.instance_id = instance_id
        self.rack_id = rack_id
        self.retry_backoff_ms = retry_backoff_ms
        self.state = UNSUBSCRIBED
        self.member_id = ""
        self.member_epoch = JOIN_GROUP_MEMBER_EPOCH
        self.heartbeat_interval_ms = DEFAULT_HEARTBEAT_INTERVAL_MS
        self.topic_names: tuple[str, ...] | None = None
        self.topic_regex: str | None = None
        self.owned: frozenset[TopicPartition] = frozenset()
        self.target: frozenset[TopicPartition] | None = None  # None: nothing assigned yet
        self.target_epoch = -1
        self.fatal_error: BaseException | None = None
        self.last_poll_ms = now_ms
        self._next_heartbeat_ms = 0.0
        self._failures = 0
        self._send_subscription = True
        self._send_owned = True
        self._in_flight: str | None = None  # "heartbeat" or "leave"
        self._after_leave = CLOSED

    # -- transitions -------------------------------------------------------------------

    def _move(self, event: str) -> None:
        new_state = _TRANSITIONS.get((self.state, event))
        assert new_state is not None, f"no transition from {self.state} on {event}"
        log.debug("group %s member %s: %s -> %s on %s", self.group_id, self.member_id or "-",
                  self.state, new_state, event)
        self.state = new_state

    def _rejoin_fields(self) -> None:
        self.member_epoch = JOIN_GROUP_MEMBER_EPOCH
        self.target = None
        self.target_epoch = -1
        self._send_subscription = True
        self._send_owned = True
        self._next_heartbeat_ms = 0.0

    # -- the application's side ----------------------------------------------------------

    def subscribe(self, topic_names: Iterable[str] | None = None, topic_regex: str | None = None) -> None:
        assert (topic_names is None) != (topic_regex is None), "names or a regex, not both"
        self.topic_names = tuple(sorted(set(topic_names))) if topic_names is not None else None
        self.topic_regex = topic_regex
        self._send_subscription = True
        self._next_heartbeat_ms = 0.0
        if self.state == UNSUBSCRIBED:
            self._rejoin_fields()
            self._move("subscribe")

    def poll_called(self, now_ms: float) -> None:
        self.last_poll_ms = now_ms

    def needs_release(self) -> bool:
        """True when the application must give up every partition (lost) before rejoining."""
        return self.state in (FENCED, STALE)

    def released(self) -> None:
        """The application gave up every partition: join again with epoch 0."""
        self.owned = frozenset()
        self._rejoin_fields()
        self._move("released")

    def reconciled(self, owned: Iterable[TopicPartition]) -> None:
        """The application now owns ``owned``; the next heartbeat (sent at once) reports it."""
        owned = frozenset(owned)
        if owned != self.owned:
            self.owned = owned
            self._send_owned = True
            self._next_heartbeat_ms = 0.0

    def assignment_to_reconcile(self) -> frozenset[TopicPartition] | None:
        """The target when it differs from what the application owns, else None."""
        if self.state != STABLE or self.target is None or self.target == self.owned:
            return None
        return self.target

    def commit_identity(self) -> tuple[str, int] | None:
        """``(member_id, member_epoch)`` to commit with, or None when not a member now."""
        if self.state in (STABLE, JOINING) and self.member_id and self.member_epoch > 0:
            return self.member_id, self.member_epoch
        return None

    def leave(self, then: str = CLOSED) -> None:
        """Leave the group; afterwards the state is ``then`` (CLOSED or UNSUBSCRIBED)."""
        assert then in (CLOSED, UNSUBSCRIBED)
        if then == UNSUBSCRIBED:
            self.topic_names = None
            self.topic_regex = None
        if self.state in (CLOSED, LEAVING):
            if self.state == LEAVING:
                self._after_leave = then
            return
        assert self.state in _LEAVE_FROM
        self.target = None
        if (self.member_id and self.state in (JOINING, STABLE, FENCED)) or self._in_flight is not None:
            self._after_leave = then
            self.state = LEAVING
            self._next_heartbeat_ms = 0.0
        else:
            self._finish_leave(then)

    def _leave_next(self) -> None:
        """A heartbeat sent before the leave was asked for has ended: send the leave now, if
        the coordinator knows this member at all."""
        if self.member_id:
            self._next_heartbeat_ms = 0.0
        else:
            self._finish_leave(self._after_leave)

    def _finish_leave(self, then: str) -> None:
        self.state = then
        if self.instance_id is None or then != CLOSED:
            self.member_id = ""  # the coordinator forgot the member (a static one only keeps it when closing)
        self.member_epoch = JOIN_GROUP_MEMBER_EPOCH
        if then == UNSUBSCRIBED and (self.topic_names is not None or self.topic_regex is not None):
            self._rejoin_fields()  # subscribed again while the leave was out
            self._move("subscribe")

    # -- timing ---------------------------------------------------------------------------

    def check_poll_timeout(self, now_ms: float) -> bool:
        """Leave the group when ``poll`` was not called for the max poll interval."""
        if self.state in (JOINING, STABLE) and now_ms - self.last_poll_ms > self.rebalance_timeout_ms:
            self._move("poll_timeout")
            self._after_leave = STALE
            self.target = None
            self._next_heartbeat_ms = 0.0
            if not self.member_id and self._in_flight is None:
                self._finish_leave(STALE)
            return True
        return False

    def wants_heartbeat(self) -> bool:
        return self.state in _HEARTBEATING

    def time_to_next_heartbeat_ms(self, now_ms: float) -> float:
        """0 when a heartbeat should go now; inf when none is wanted."""
        if self.state not in _HEARTBEATING or self._in_flight is not None:
            return float("inf")
        due = self._next_heartbeat_ms
        if self.state == STABLE and (self._send_owned or self._send_subscription) and self._failures == 0:
            due = 0.0  # report a reconciliation or a new subscription at once
        return max(0.0, due - now_ms)

    def time_to_poll_timeout_ms(self, now_ms: float) -> float:
        if self.state not in (JOINING, STABLE):
            return float("inf")
        return max(0.0, self.last_poll_ms + self.rebalance_timeout_ms - now_ms)

    # -- heartbeats -------------------------------------------------------------------------

    def heartbeat_request(self, now_ms: float) -> dict[str, Any] | None:
        """The body of the heartbeat to send now, or None when none is due."""
        if self.time_to_next_heartbeat_ms(now_ms) > 0:
            return None
        leaving = self.state == LEAVING
        joining = self.state == JOINING and self.member_epoch == JOIN_GROUP_MEMBER_EPOCH
        if leaving:
            # Only a static member that closes says it will come back: after a poll timeout
            # or an unsubscribe its partitions must move on at once.
            static_close = self.instance_id is not None and self._after_leave == CLOSED
            epoch = LEAVE_GROUP_STATIC_MEMBER_EPOCH if static_close else LEAVE_GROUP_MEMBER_EPOCH
        else:
            epoch = JOIN_GROUP_MEMBER_EPOCH if joining else self.member_epoch
        send_subscription = (joining or self._send_subscription) and not leaving
        send_owned = (joining or self._send_owned) and not leaving
        body: dict[str, Any] = {
            "group_id": self.group_id,
            "member_id": self.member_id,
            "member_epoch": epoch,
            "instance_id": self.instance_id,
            "rack_id": self.rack_id,
            "client_id": self.client_id,
            "rebalance_timeout_ms": self.rebalance_timeout_ms,
            "session_timeout_ms": self.session_timeout_ms,
            "subscribed_topic_names": None,
            "subscribed_topic_regex": None,
            "topic_partitions": topic_partitions_to_wire(self.owned) if send_owned else None,
        }
        if send_subscription:
            if self.topic_regex is not None:
                body["subscribed_topic_names"] = []
                body["subscribed_topic_regex"] = self.topic_regex
            else:
                body["subscribed_topic_names"] = list(self.topic_names or ())
        if send_subscription:
            self._send_subscription = False
        if send_owned:
            self._send_owned = False
        self._in_flight = "leave" if leaving else "heartbeat"
        return body

    def on_heartbeat_response(self, body: dict[str, Any], now_ms: float) -> None:
        kind, self._in_flight = self._in_flight, None
        assert kind is not None, "a heartbeat response without a request"
        if kind == "leave":
            self._finish_leave(self._after_leave)
            return
        code = body.get("error_code", 0)
        if code == errors.NONE:
            self._failures = 0
            if body.get("member_id"):
                self.member_id = body["member_id"]
            self.member_epoch = body.get("member_epoch", self.member_epoch)
            interval = body.get("heartbeat_interval_ms")
            if isinstance(interval, int) and interval > 0:
                self.heartbeat_interval_ms = interval
            self._next_heartbeat_ms = now_ms + self.heartbeat_interval_ms
            if self.state == LEAVING:
                self._leave_next()  # a leave was asked for while this heartbeat was out
                return
            if self.state == JOINING:
                self._move("joined")
                log.info("joined group %s as member %s at epoch %d", self.group_id, self.member_id, self.member_epoch)
            assignment = body.get("assignment")
            if assignment is not None and self.state == STABLE:
                self.target = topic_partitions_from_wire(assignment.get("topic_partitions"))
                self.target_epoch = self.member_epoch
                log.info("group %s member %s: assignment at epoch %d has %d partitions",
                         self.group_id, self.member_id, self.member_epoch, len(self.target))
            return
        self._send_subscription = True
        self._send_owned = True
        if self.state == LEAVING:
            self._leave_next()
            return
        if code in FENCING_ERROR_CODES:
            log.warning("group %s member %s was fenced (%s); it gives up its partitions and rejoins",
                        self.group_id, self.member_id, errors.error_name(code))
            if code == errors.UNKNOWN_MEMBER_ID and self.instance_id is None:
                self.member_id = ""  # the coordinator no longer knows the id: ask for a new one
            self.target = None
            self._move("fenced")
            return
        error = errors.error_for_code(code, body.get("error_message") or f"heartbeat of group {self.group_id}")
        if error.retriable:
            self._back_off(now_ms)
            return
        log.error("group %s: heartbeat failed: %s", self.group_id, error)
        self.fatal_error = error
        self.target = None
        self._move("fatal")

    def on_heartbeat_failure(self, error: BaseException, now_ms: float) -> None:
        """The heartbeat got no answer (network, timeout, no coordinator), or never went out."""
        kind, self._in_flight = self._in_flight, None
        self._send_subscription = True
        self._send_owned = True
        if self.state == LEAVING:
            if kind == "heartbeat":
                self._leave_next()
            else:  # the leave failed, or no coordinator to send it to: the session timeout ends it
                self._finish_leave(self._after_leave)
            return
        if isinstance(error, errors.KraftError) and not error.retriable and self.state in (JOINING, STABLE):
            log.error("group %s: heartbeat failed: %s", self.group_id, error)
            self.fatal_error = error
            self.target = None
            self._move("fatal")
            return
        self._back_off(now_ms)

    def _back_off(self, now_ms: float) -> None:
        self._failures += 1
        backoff_ms = min(RETRY_BACKOFF_MS_MAX, self.retry_backoff_ms * 2 ** min(self._failures - 1, 10))
        self._next_heartbeat_ms = now_ms + backoff_ms


def _now_ms() -> float:
    return time.monotonic() * 1000


class CoordinatorClient:
    """Finds a group's coordinator and sends it requests. Thread-safe."""

    def __init__(self, client: NetworkClient, key: str, *, retry_backoff_ms: int = 100) -> None:
        self.client = client
        self.key = key
        self.retry_backoff_s = retry_backoff_ms / 1000
        self._lock = threading.Lock()
        self._address: tuple[int, str, int] | None = None  # (node_id, host, port)

    @property
    def known(self) -> bool:
        return self._address is not None

    def invalidate(self, reason: object = "") -> None:
        with self._lock:
            if self._address is not None:
                log.info("coordinator of %s at node %d is gone (%s); looking it up again",
                         self.key, self._address[0], reason)
            self._address = None

    def find(self, timeout_ms: int | None = None) -> tuple[int, str, int]:
        """The coordinator's ``(node_id, host, port)``, asking FindCoordinator when unknown."""
        address = self._address
        if address is not None:
            return address
        response = self.client.request_any(
            ApiKey.FIND_COORDINATOR, {"key": self.key, "key_type": COORDINATOR_KEY_TYPE_GROUP}, timeout_ms=timeout_ms)
        check_body_error(response, "FindCoordinator")
        code = response.get("error_code", 0)
        if code:
            raise errors.error_for_code(code, response.get("error_message") or f"FindCoordinator for {self.key!r}")
        address = (response["node_id"], response["host"], response["port"])
        with self._lock:
            if self._address != address:
                log.info("coordinator of %s is node %d at %s:%d", self.key, *address)
            self._address = address
        return address

    def connection(self, channel: str = CHANNEL_GROUP, timeout_ms: int | None = None) -> BrokerConnection:
        _, host, port = self.find(timeout_ms)
        return self.client.connection_to(host, port, channel)

    def send(self, api_key: int, body: dict[str, Any], channel: str = CHANNEL_GROUP) -> ResponseFuture:
        """One attempt, asynchronously; a coordinator error in the answer forgets the coordinator."""
        try:
            conn = self.connection(channel)
        except errors.KraftError as exc:
            return failed_future(exc)
        future = conn.send(api_key, body)
        future.add_callback(self._watch)
        return future

    def _watch(self, future: ResponseFuture) -> None:
        error = future.error
        if error is not None:
            if getattr(error, "invalid_metadata", False) or getattr(error, "retriable", False):
                self.invalidate(error)
            return
        code = coordinator_error(future.value or {})
        if code:
            self.invalidate(errors.error_name(code))

    def request(self, api_key: int, body: dict[str, Any], what: str, deadline_s: float,
                channel: str = CHANNEL_GROUP) -> dict[str, Any]:
        """Send until an answer that is not a coordinator error arrives, or the deadline passes.

        Raises the last retriable error at the deadline, a non-retriable one at once.
        """
        timeout_ms = self.client.request_timeout_ms
        while True:
            error: errors.KraftError
            try:
                response = self.send(api_key, body, channel).result(timeout_ms / 1000 + 1)
                check_body_error(response, what)
                code = coordinator_error(response)
                if not code:
                    return response
                error = errors.error_for_code(code, f"{what} for {self.key!r}")
            except errors.KraftError as exc:
                if not exc.retriable:
                    raise
                error = exc
                self.invalidate(exc)
            if time.monotonic() + self.retry_backoff_s >= deadline_s:
                raise error
            log.debug("%s failed (%s); retrying", what, error)
            time.sleep(self.retry_backoff_s)  # backoff before asking the coordinator again


class MembershipManager:
    """The heartbeat thread around a ``MembershipState``. The application thread reads and
    changes the state only through ``with manager.lock`` (or the methods below)."""

    def __init__(
        self,
        state: MembershipState,
        coordinator: CoordinatorClient,
        *,
        on_change: Callable[[], None] = lambda: None,
    ) -> None:
        self.state = state
        self.coordinator = coordinator
        self.lock = threading.Lock()
        self._wakeup = threading.Condition(self.lock)
        self._on_change = on_change
        self._stopped = False
        self._thread = threading.Thread(target=self._run, name=f"kraft-group-{state.group_id}", daemon=True)
        self._thread.start()

    def notify(self) -> None:
        """Call after changing the state: the thread looks at it again at once."""
        with self.lock:
            self._wakeup.notify_all()

    def close(self, timeout_ms: int = LEAVE_TIMEOUT_MS_MAX) -> None:
        """Leave the group (one heartbeat, bounded wait) and stop the thread."""
        with self.lock:
            self.state.leave(CLOSED)
            self._wakeup.notify_all()
        self._thread.join(timeout_ms / 1000)
        with self.lock:
            self._stopped = True
            self._wakeup.notify_all()

    def _run(self) -> None:
        try:
            while self._run_once():
                pass
        except Exception:
            log.exception("group %s: heartbeat thread failed", self.state.group_id)

    def _run_once(self) -> bool:
        state = self.state
        with self.lock:
            now = _now_ms()
            timed_out = state.check_poll_timeout(now)
        if timed_out:
            log.warning("group %s: poll() was not called for max_poll_interval_ms=%d; member %s leaves the "
                        "group and its partitions go to other members (the next poll rejoins)",
                        state.group_id, state.rebalance_timeout_ms, state.member_id or "-")
            self._on_change()
        with self.lock:
            now = _now_ms()
            if state.state == CLOSED or self._stopped:
                return False
            wait_ms = min(state.time_to_next_heartbeat_ms(now), state.time_to_poll_timeout_ms(now))
            if wait_ms > 0:
                self._wakeup.wait(min(wait_ms, 1000.0) / 1000)
                return True
        try:
            conn = self.coordinator.connection(CHANNEL_HEARTBEAT)
        except errors.KraftError as exc:
            log.debug("group %s: no coordinator yet: %s", state.group_id, exc)
            with self.lock:
                state.on_heartbeat_failure(exc, _now_ms())
            self._on_change()
            return True
        with self.lock:
            body = state.heartbeat_request(_now_ms())
        if body is None:
            return True
        future = conn.send(ApiKey.CONSUMER_GROUP_HEARTBEAT, body)
        try:
            response = future.result(self.coordinator.client.request_timeout_ms / 1000 + 1)
            check_body_error(response, "ConsumerGroupHeartbeat")
        except errors.KraftError as exc:
            if exc.retriable:
                self.coordinator.invalidate(exc)
            with self.lock:
                state.on_heartbeat_failure(exc, _now_ms())
            self._on_change()
            return True
        if response.get("error_code", 0) in COORDINATOR_ERROR_CODES:
            self.coordinator.invalidate(errors.error_name(response["error_code"]))
        with self.lock:
            state.on_heartbeat_response(response, _now_ms())
        self._on_change()
        return True
