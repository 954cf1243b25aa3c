"""Kafka's error codes, by their numbers and names, and the exception raised for each.

The wire carries only the number; both sides map it with ``error_for_code``. Every error
carries two flags that retry logic reads instead of matching names (kafka-python's idea):
``retriable`` (the same request may succeed later) and ``invalid_metadata`` (refresh the
cluster metadata before retrying, e.g. the leader moved).
"""

from __future__ import annotations


class KraftError(Exception):
    """Root of every error kraft raises at its boundaries."""

    code: int = -1
    name: str = "UNKNOWN_SERVER_ERROR"
    retriable: bool = False
    invalid_metadata: bool = False

    def __init__(self, message: str | None = None) -> None:
        self.message = message or ""
        super().__init__(f"{self.name}: {message}" if message else self.name)


class ConfigError(KraftError):
    """A configuration key has a bad value or is unknown. The message names the key."""

    name = "INVALID_CONFIG"
    code = 40


class KafkaError(KraftError):
    """An error with a Kafka wire code; one subclass per code below."""


NONE = 0
UNKNOWN_SERVER_ERROR = -1
OFFSET_OUT_OF_RANGE = 1
CORRUPT_MESSAGE = 2
UNKNOWN_TOPIC_OR_PARTITION = 3
INVALID_FETCH_SIZE = 4
LEADER_NOT_AVAILABLE = 5
NOT_LEADER_OR_FOLLOWER = 6
REQUEST_TIMED_OUT = 7
BROKER_NOT_AVAILABLE = 8
REPLICA_NOT_AVAILABLE = 9
MESSAGE_TOO_LARGE = 10
NETWORK_EXCEPTION = 13
COORDINATOR_LOAD_IN_PROGRESS = 14
COORDINATOR_NOT_AVAILABLE = 15
NOT_COORDINATOR = 16
INVALID_TOPIC_EXCEPTION = 17
RECORD_LIST_TOO_LARGE = 18
NOT_ENOUGH_REPLICAS = 19
NOT_ENOUGH_REPLICAS_AFTER_APPEND = 20
INVALID_REQUIRED_ACKS = 21
ILLEGAL_GENERATION = 22
INVALID_GROUP_ID = 24
UNKNOWN_MEMBER_ID = 25
INVALID_SESSION_TIMEOUT = 26
REBALANCE_IN_PROGRESS = 27
INVALID_TIMESTAMP = 32
UNSUPPORTED_VERSION = 35
TOPIC_ALREADY_EXISTS = 36
INVALID_PARTITIONS = 37
INVALID_REPLICATION_FACTOR = 38
INVALID_REPLICA_ASSIGNMENT = 39
INVALID_CONFIG = 40
NOT_CONTROLLER = 41
INVALID_REQUEST = 42
POLICY_VIOLATION = 44
KAFKA_STORAGE_ERROR = 56
NON_EMPTY_GROUP = 68
GROUP_ID_NOT_FOUND = 69
FENCED_LEADER_EPOCH = 74
UNKNOWN_LEADER_EPOCH = 75
UNSUPPORTED_COMPRESSION_TYPE = 76
STALE_BROKER_EPOCH = 77
OFFSET_NOT_AVAILABLE = 78
FENCED_INSTANCE_ID = 82
INVALID_RECORD = 87
INVALID_UPDATE_VERSION = 95
UNKNOWN_TOPIC_ID = 100
FENCED_MEMBER_EPOCH = 110
STALE_MEMBER_EPOCH = 113


class UnknownServerErrorError(KafkaError):
    code = UNKNOWN_SERVER_ERROR
    name = "UNKNOWN_SERVER_ERROR"


class OffsetOutOfRangeError(KafkaError):
    code = OFFSET_OUT_OF_RANGE
    name = "OFFSET_OUT_OF_RANGE"


class CorruptMessageError(KafkaError):
    code = CORRUPT_MESSAGE
    name = "CORRUPT_MESSAGE"
    retriable = True


class UnknownTopicOrPartitionError(KafkaError):
    code = UNKNOWN_TOPIC_OR_PARTITION
    name = "UNKNOWN_TOPIC_OR_PARTITION"
    retriable = True
    invalid_metadata = True


class InvalidFetchSizeError(KafkaError):
    code = INVALID_FETCH_SIZE
    name = "INVALID_FETCH_SIZE"


class LeaderNotAvailableError(KafkaError):
    code = LEADER_NOT_AVAILABLE
    name = "LEADER_NOT_AVAILABLE"
    retriable = True
    invalid_metadata = True


class NotLeaderOrFollowerError(KafkaError):
    code = NOT_LEADER_OR_FOLLOWER
    name = "NOT_LEADER_OR_FOLLOWER"
    retriable = True
    invalid_metadata = True


class RequestTimedOutError(KafkaError):
    code = REQUEST_TIMED_OUT
    name = "REQUEST_TIMED_OUT"
    retriable = True


class BrokerNotAvailableError(KafkaError):
    code = BROKER_NOT_AVAILABLE
    name = "BROKER_NOT_AVAILABLE"
    retriable = True
    invalid_metadata = True


class ReplicaNotAvailableError(KafkaError):
    code = REPLICA_NOT_AVAILABLE
    name = "REPLICA_NOT_AVAILABLE"
    retriable = True
    invalid_metadata = True


class MessageTooLargeError(KafkaError):
    code = MESSAGE_TOO_LARGE
    name = "MESSAGE_TOO_LARGE"


class NetworkExceptionError(KafkaError):
    code = NETWORK_EXCEPTION
    name = "NETWORK_EXCEPTION"
    retriable = True
    invalid_metadata = True


class CoordinatorLoadInProgressError(KafkaError):
    code = COORDINATOR_LOAD_IN_PROGRESS
    name = "COORDINATOR_LOAD_IN_PROGRESS"
    retriable = True


class CoordinatorNotAvailableError(KafkaError):
    code = COORDINATOR_NOT_AVAILABLE
    name = "COORDINATOR_NOT_AVAILABLE"
    retriable = True
    invalid_metadata = True


class NotCoordinatorError(KafkaError):
    code = NOT_COORDINATOR
    name = "NOT_COORDINATOR"
    retriable = True
    invalid_metadata = True


class InvalidTopicExceptionError(KafkaError):
    code = INVALID_TOPIC_EXCEPTION
    name = "INVALID_TOPIC_EXCEPTION"


class RecordListTooLargeError(KafkaError):
    code = RECORD_LIST_TOO_LARGE
    name = "RECORD_LIST_TOO_LARGE"


class NotEnoughReplicasError(KafkaError):
    code = NOT_ENOUGH_REPLICAS
    name = "NOT_ENOUGH_REPLICAS"
    retriable = True


class NotEnoughReplicasAfterAppendError(KafkaError):
    code = NOT_ENOUGH_REPLICAS_AFTER_APPEND
    name = "NOT_ENOUGH_REPLICAS_AFTER_APPEND"
    retriable = True


class InvalidRequiredAcksError(KafkaError):
    code = INVALID_REQUIRED_ACKS
    name = "INVALID_REQUIRED_ACKS"


class IllegalGenerationError(KafkaError):
    code = ILLEGAL_GENERATION
    name = "ILLEGAL_GENERATION"


class InvalidGroupIdError(KafkaError):
    code = INVALID_GROUP_ID
    name = "INVALID_GROUP_ID"


class UnknownMemberIdError(KafkaError):
    code = UNKNOWN_MEMBER_ID
    name = "UNKNOWN_MEMBER_ID"


class InvalidSessionTimeoutError(KafkaError):
    code = INVALID_SESSION_TIMEOUT
    name = "INVALID_SESSION_TIMEOUT"


class RebalanceInProgressError(KafkaError):
    code = REBALANCE_IN_PROGRESS
    name = "REBALANCE_IN_PROGRESS"


class InvalidTimestampError(KafkaError):
    code = INVALID_TIMESTAMP
    name = "INVALID_TIMESTAMP"


class UnsupportedVersionError(KafkaError):
    code = UNSUPPORTED_VERSION
    name = "UNSUPPORTED_VERSION"


class TopicAlreadyExistsError(KafkaError):
    code = TOPIC_ALREADY_EXISTS
    name = "TOPIC_ALREADY_EXISTS"


class InvalidPartitionsError(KafkaError):
    code = INVALID_PARTITIONS
    name = "INVALID_PARTITIONS"


class InvalidReplicationFactorError(KafkaError):
    code = INVALID_REPLICATION_FACTOR
    name = "INVALID_REPLICATION_FACTOR"


class InvalidReplicaAssignmentError(KafkaError):
    code = INVALID_REPLICA_ASSIGNMENT
    name = "INVALID_REPLICA_ASSIGNMENT"


class InvalidConfigError(KafkaError):
    code = INVALID_CONFIG
    name = "INVALID_CONFIG"


class NotControllerError(KafkaError):
    code = NOT_CONTROLLER
    name = "NOT_CONTROLLER"
    retriable = True
    invalid_metadata = True


class InvalidRequestError(KafkaError):
    code = INVALID_REQUEST
    name = "INVALID_REQUEST"


class PolicyViolationError(KafkaError):
    code = POLICY_VIOLATION
    name = "POLICY_VIOLATION"


class KafkaStorageErrorError(KafkaError):
    code = KAFKA_STORAGE_ERROR
    name = "KAFKA_STORAGE_ERROR"
    retriable = True
    invalid_metadata = True


class NonEmptyGroupError(KafkaError):
    code = NON_EMPTY_GROUP
    name = "NON_EMPTY_GROUP"


class GroupIdNotFoundError(KafkaError):
    code = GROUP_ID_NOT_FOUND
    name = "GROUP_ID_NOT_FOUND"


class StaleBrokerEpochError(KafkaError):
    code = STALE_BROKER_EPOCH
    name = "STALE_BROKER_EPOCH"


class FencedLeaderEpochError(KafkaError):
    code = FENCED_LEADER_EPOCH
    name = "FENCED_LEADER_EPOCH"
    retriable = True
    invalid_metadata = True


class UnknownLeaderEpochError(KafkaError):
    code = UNKNOWN_LEADER_EPOCH
    name = "UNKNOWN_LEADER_EPOCH"
    retriable = True
    invalid_metadata = True


class UnsupportedCompressionTypeError(KafkaError):
    code = UNSUPPORTED_COMPRESSION_TYPE
    name = "UNSUPPORTED_COMPRESSION_TYPE"


class OffsetNotAvailableError(KafkaError):
    code = OFFSET_NOT_AVAILABLE
    name = "OFFSET_NOT_AVAILABLE"
    retriable = True


class FencedInstanceIdError(KafkaError):
    code = FENCED_INSTANCE_ID
    name = "FENCED_INSTANCE_ID"


class InvalidRecordError(KafkaError):
    code = INVALID_RECORD
    name = "INVALID_RECORD"


class InvalidUpdateVersionError(KafkaError):
    code = INVALID_UPDATE_VERSION
    name = "INVALID_UPDATE_VERSION"


class UnknownTopicIdError(KafkaError):
    code = UNKNOWN_TOPIC_ID
    name = "UNKNOWN_TOPIC_ID"
    retriable = True
    invalid_metadata = True


class FencedMemberEpochError(KafkaError):
    code = FENCED_MEMBER_EPOCH
    name = "FENCED_MEMBER_EPOCH"


class StaleMemberEpochError(KafkaError):
    code = STALE_MEMBER_EPOCH
    name = "STALE_MEMBER_EPOCH"


_BY_CODE: dict[int, type[KafkaError]] = {cls.code: cls for cls in KafkaError.__subclasses__()}
_BY_NAME: dict[str, type[KafkaError]] = {cls.name: cls for cls in _BY_CODE.values()}


def error_class(code_or_name: int | str) -> type[KafkaError]:
    """The exception class for a wire code or name; unknown codes map to UNKNOWN_SERVER_ERROR."""
    if isinstance(code_or_name, str):
        return _BY_NAME[code_or_name]
    return _BY_CODE.get(code_or_name, _BY_CODE[-1])


def error_for_code(code: int, message: str | None = None) -> KafkaError:
    return error_class(code)(message)


def error_name(code: int) -> str:
    if code == NONE:
        return "NONE"
    cls = _BY_CODE.get(code)
    return cls.name if cls else f"UNKNOWN_ERROR_CODE_{code}"


def check(code: int, message: str | None = None) -> None:
    """Raise the error for ``code`` unless it is NONE."""
    if code != NONE:
        raise error_for_code(code, message)
