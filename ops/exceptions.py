"""Errors of the operations package: the ``lukhas`` command's set-up, fetching Kafka, the local
cluster and Kafka's transaction tool."""

from __future__ import annotations

from lukhas_context.schemas.exceptions import LukhasError

__all__ = [
    "ClusterStartError",
    "ClusterStateError",
    "InvalidClusterSpecError",
    "JavaNotFoundError",
    "KafkaFetchError",
    "KafkaHomeError",
    "LukhasError",
    "NotConfiguredError",
    "OpsError",
    "RedisNotInstalledError",
    "TransactionToolError",
]


class OpsError(LukhasError):
    """Root of the operations errors."""


class NotConfiguredError(OpsError):
    """A command lacks what it must run against (Kafka, the read API, a local cluster): no
    option, no environment variable and nothing ``lukhas up`` recorded names it. The message
    says what to pass or set; ``lukhas`` prints it alone (no class name), exit 1."""


class JavaNotFoundError(OpsError):
    """No ``java`` executable on ``PATH``; Kafka cannot run without a JRE (17 or newer)."""


class KafkaHomeError(OpsError):
    """``KAFKA_HOME`` does not point at an unpacked Kafka distribution (no ``libs/kafka_*.jar``)."""


class KafkaFetchError(OpsError):
    """Maven could not fetch the Kafka jars. The message carries the tail of Maven's output.

    Retriable: most causes (network, a Maven Central hiccup) go away on a second try.
    """

    retriable = True


class RedisNotInstalledError(OpsError):
    """``redis-server`` is not on ``PATH`` and we are not root, so we cannot install it."""


class ClusterStartError(OpsError):
    """A part of the local cluster did not come up; the message names its log file and tail."""


class InvalidClusterSpecError(OpsError, ValueError):
    """A ``ClusterSpec`` value is out of its range (a ``ValueError`` too, as it was before it
    had a type)."""


class ClusterStateError(OpsError):
    """The data directory was created for a different cluster shape than the one requested."""


class TransactionToolError(OpsError):
    """Kafka's ``TransactionsCommand`` failed or did not finish; the message is its reason."""
