"""One root exception for the project, with a leaf class per failure a caller can act on."""

from __future__ import annotations


class StreamAppError(Exception):
    """Root of every error this project raises on purpose."""


class ConfigError(StreamAppError):
    """A setting (environment variable or policy file) has a bad value; the message names it."""


class InvalidEventError(StreamAppError):
    """An input event breaks the event schema (SPEC §3); the message names the field and the reason."""


class SerializationError(StreamAppError):
    """Bytes could not be decoded as, or an object could not be encoded to, JSON."""


class BrokerError(StreamAppError):
    """The Kafka-compatible broker could not be started, reached, or asked."""


class TopicPlanError(StreamAppError):
    """A topic plan is refused (for example it breaks co-partitioning of the input topics)."""


class PolicyMismatchError(StreamAppError):
    """Stored state was written under another reward policy than the one configured."""


class StateFormatError(SerializationError):
    """Stored state was written in a layout or format this worker cannot read (by another version); the message
    says which."""


class ReplaySelectionError(StreamAppError):
    """`stream-app replay` cannot read what was asked: a topic that does not exist, --from after --to, or a range
    with no event in it; the message says which."""


class ReplayError(StreamAppError):
    """`stream-app replay` could not finish scoring: its second process (the candidate's) failed; the message says
    how."""
