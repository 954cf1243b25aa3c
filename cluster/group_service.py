"""The group coordinator shell: runs ``cluster.group_coordinator`` on the active controller.

Theory of operation
-------------------
The coordinator of every consumer group is the ACTIVE CONTROLLER (on a single node: the node
itself). Group state and committed offsets are metadata records in the Raft quorum
(``kraft.groups``), so a controller failover or a full restart loses nothing but the
session timers. There is no forwarding: a node that is not the active controller answers
every group API except FindCoordinator with NOT_COORDINATOR (COORDINATOR_NOT_AVAILABLE while
it knows no controller, or while it is the Raft leader but has not applied the whole log),
and FindCoordinator on any node names the active controller's client endpoint from the
image's brokers.

Each request, parsed by ``cluster.handlers``, flows like this::

    is this node the coordinator?  no -> NOT_COORDINATOR / COORDINATOR_NOT_AVAILABLE
    decide on the current image (pure)            no records -> answer at once (no lock,
                                                                nothing appended)
    records -> ControllerService.commit(decide)   decide again on the newest image under
                                                   the metadata lock, append (one Raft
                                                   command), answer, log the events

so a heartbeat that changes nothing costs no append, and every change (join, leave,
subscription, new target, epoch advance, revocation acknowledged, commit, delete) is one
append. One OffsetCommit request is one append however many partitions it names.

Session timers (``GroupSessions``) are soft state of the active controller, like the broker
heartbeat tracker: every ``GROUP_TICK_MS`` the tick removes members silent for their
session_timeout_ms or slower than their rebalance_timeout_ms to revoke partitions
(``expire_members``). A node that becomes the coordinator gives every member of every group
a fresh session first; a node that stops being it stops expiring. The sessions also keep
what each member last reported owning, which a heartbeat with ``topic_partitions`` None
("unchanged") stands for.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import uuid
from typing import Any, Callable, Sequence

from cluster.config import NodeConfig
from kraft.raft_log import RaftMetadataLog
from cluster.controller_service import ControllerService, cancel_and_wait, now_ms, tick_forever
from cluster.group_coordinator import (
    CoordinatorConfig,
    Decision,
    GroupSessions,
    HeartbeatRequest,
    OffsetCommitRequest,
    commit_offsets,
    delete_groups,
    describe_group,
    expire_members,
    fetch_offsets,
    heartbeat,
    list_groups,
)
from cluster.protocol import errors
from cluster.protocol.api import COORDINATOR_KEY_TYPE_GROUP, LEAVE_GROUP_MEMBER_EPOCH
from kraft.image import MetadataImage
from kraft.quorum import MetadataLog, MetadataLogError
from kraft.raft_log import NotControllerError
from kraft.records import MetadataRecord

logger = logging.getLogger(__name__)

GROUP_TICK_MS = 100  # how often the coordinator looks for expired members
NO_NODE_ID = -1
NO_PORT = -1

Body = dict[str, Any]


def _records_of(decision: Decision) -> tuple[list[MetadataRecord], Decision]:
    return decision.records, decision


class GroupService:
    """Consumer groups on this node (see the module docstring)."""

    def __init__(self, config: NodeConfig, controller: ControllerService, metadata: MetadataLog,
                 new_member_id: Callable[[], str] | None = None) -> None:
        self.node_id = config.node_id
        self.controller = controller
        self.metadata = metadata
        self.coordinator_config = CoordinatorConfig(
            min_session_timeout_ms=config.group_min_session_timeout_ms,
            max_session_timeout_ms=config.group_max_session_timeout_ms,
            heartbeat_interval_ms=config.group_heartbeat_interval_ms,
        )
        self.new_member_id = new_member_id or (lambda: uuid.uuid4().hex)
        self.sessions = GroupSessions()
        self._acting = False  # this node runs the session timers
        self._task: asyncio.Task | None = None

    # -- who coordinates ------------------------------------------------------------------

    def coordinator_error(self) -> tuple[int, str] | None:
        """None when this node is the coordinator now, else (error code, message)."""
        raft = self.controller.raft
        if self.controller.is_active() and (raft is None or (raft.status.ready and (
                not isinstance(raft, RaftMetadataLog) or raft.has_quorum_lease()))):
            return None  # a voter that lost touch with the majority (paused?) answers nothing
        controller_id = self.controller.controller_id()
        if controller_id is None or controller_id == self.node_id:
            return errors.COORDINATOR_NOT_AVAILABLE, f"node {self.node_id} knows no ready group coordinator"
        return errors.NOT_COORDINATOR, (f"node {self.node_id} is not the group coordinator "
                                        f"(the active controller {controller_id} is)")

    def find_coordinator(self, key: str, key_type: int) -> Body:
        if key_type != COORDINATOR_KEY_TYPE_GROUP:
            return {"error_code": errors.INVALID_REQUEST, "error_message": f"key_type {key_type} is not 0 (group)",
                    "node_id": NO_NODE_ID, "host": "", "port": NO_PORT}
        controller_id = self.controller.controller_id()
        broker = self.metadata.image.brokers.get(controller_id) if controller_id is not None else None
        if broker is None:
            return {"error_code": errors.COORDINATOR_NOT_AVAILABLE,
                    "error_message": f"no active controller is known to node {self.node_id}",
                    "node_id": NO_NODE_ID, "host": "", "port": NO_PORT}
        return {"error_code": errors.NONE, "error_message": None, "node_id": broker.broker_id,
                "host": broker.host, "port": broker.port}

    # -- the APIs -------------------------------------------------------------------------

    async def heartbeat(self, request: HeartbeatRequest) -> Body:
        heard_ms = now_ms()
        new_member_id = self.new_member_id()
        reported = request.owned
        if reported is None and request.member_id:
            request = dataclasses.replace(
                request, owned=self.sessions.owned(request.group_id, request.member_id, None))

        def decide(image: MetadataImage) -> Decision:
            return heartbeat(image, request, self.coordinator_config, new_member_id)

        decision, failure = await self._decide(decide)
        if failure is not None:
            code, message = failure
            return {"error_code": code, "error_message": message, "member_id": request.member_id or None,
                    "member_epoch": request.member_epoch, "heartbeat_interval_ms": 0, "assignment": None}
        response = decision.response
        if response["error_code"] == errors.NONE:
            member_id = response["member_id"]
            if request.member_epoch == LEAVE_GROUP_MEMBER_EPOCH:
                self.sessions.forget(request.group_id, member_id)
            else:
                self.sessions.heard(request.group_id, member_id, heard_ms, reported)
        return response

    async def commit_offsets(self, request: OffsetCommitRequest) -> Body:
        decision, failure = await self._decide(lambda image: commit_offsets(image, request))
        if failure is not None:
            code, message = failure
            return {"topics": [
                {"name": name, "partitions": [{"index": p.index, "error_code": code, "error_message": message}
                                              for p in partitions]}
                for name, partitions in request.topics
            ]}
        return decision.response

    async def fetch_offsets(self, group_id: str, topics: Sequence[tuple[str, Sequence[int]]] | None) -> Body:
        failure = self.coordinator_error()
        if failure is not None:
            return {"error_code": failure[0], "error_message": failure[1], "topics": []}
        return fetch_offsets(self.metadata.image, group_id, topics)

    async def list_groups(self) -> Body:
        failure = self.coordinator_error()
        if failure is not None:
            return {"error_code": failure[0], "error_message": failure[1], "groups": []}
        return list_groups(self.metadata.image)

    async def describe_groups(self, group_ids: Sequence[str]) -> Body:
        failure = self.coordinator_error()
        image = self.metadata.image
        if failure is None:
            return {"groups": [describe_group(image, group_id) for group_id in group_ids]}
        return {"groups": [
            {"error_code": failure[0], "error_message": failure[1], "group_id": group_id, "group_state": "empty",
             "group_epoch": -1, "assignment_epoch": -1, "members": []}
            for group_id in group_ids
        ]}

    async def delete_groups(self, group_ids: Sequence[str]) -> Body:
        decision, failure = await self._decide(lambda image: delete_groups(image, group_ids))
        if failure is not None:
            return {"results": [{"group_id": group_id, "error_code": failure[0], "error_message": failure[1]}
                                for group_id in group_ids]}
        return decision.response

    async def _decide(self, decide: Callable[[MetadataImage], Decision]) -> tuple[Decision, tuple[int, str] | None]:
        """Decide on the current image; append through the controller when it changes
        something. Returns the decision, or a whole-request failure (code, message)."""
        failure = self.coordinator_error()
        if failure is not None:
            return Decision(), failure
        decision = decide(self.metadata.image)
        if not decision.records:
            return decision, None
        try:
            _, decision = await self.controller.commit(lambda image: _records_of(decide(image)))
        except NotControllerError as exc:
            return Decision(), (errors.NOT_COORDINATOR, str(exc))
        except MetadataLogError as exc:
            # The append may still happen; the client retries (after FindCoordinator).
            return Decision(), (errors.COORDINATOR_NOT_AVAILABLE, f"the group change may or may not have happened: {exc}")
        for event in decision.events:
            logger.info("node %d: %s", self.node_id, event)
        return decision, None

    # -- the session timers ---------------------------------------------------------------

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(
                tick_forever(GROUP_TICK_MS, self.tick, self._stop_acting,
                             f"node {self.node_id} group session check"),
                name=f"groups-{self.node_id}")

    async def stop(self) -> None:
        await cancel_and_wait(self._task)
        self._task = None

    def _stop_acting(self) -> None:
        self._acting = False

    async def tick(self, tick_ms: int) -> None:
        """Expire members whose session or revocation time ran out (coordinator only)."""
        if self.coordinator_error() is not None:
            if self._acting:
                logger.info("node %d stopped coordinating consumer groups", self.node_id)
            self._acting = False
            return
        image = self.metadata.image
        if not self._acting:
            self._acting = True
            self.sessions.reset(image.groups, tick_ms)
            logger.info("node %d coordinates %d consumer groups; every member has a fresh session",
                        self.node_id, len(image.groups))
            return
        if not self.sessions.expired(image.groups, tick_ms):
            return

        def decide(image: MetadataImage) -> tuple[list[MetadataRecord], tuple[Decision, list]]:
            expired = self.sessions.expired(image.groups, tick_ms)
            decision = expire_members(image, expired)
            return decision.records, (decision, expired)

        _, (decision, expired) = await self.controller.commit(decide)
        for group_id, member_id, _ in expired:
            self.sessions.forget(group_id, member_id)
        for event in decision.events:
            logger.info("node %d: %s", self.node_id, event)
