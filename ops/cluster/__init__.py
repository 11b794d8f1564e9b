"""The local cluster behind ``lukhas up/down/status``: Kafka brokers, Redis, processors.

Every part is a detached process with a pid file and a log file under ``data_dir``. ``up`` starts
the parts that are not running and resumes from the data on disk; ``down`` stops them by pid and
keeps every byte of data. A pid is signalled only if ``/proc/<pid>/cmdline`` still carries the
part's markers, so a pid recycled by the OS for another program is never killed.

| module | job |
|---|---|
| ``spec`` | ``ClusterSpec``: what to run, and where each part listens |
| ``local`` | ``LocalCluster``: ``up``, ``down``, ``status`` over the parts below |
| ``brokers`` | the Kafka brokers: properties, log-dir format, start, readiness |
| ``redis_server`` | redis-server: start (installing it when root), readiness |
| ``processor`` | the worker process: start, ``/healthz`` and ``/v1/partitions`` |
| ``process`` | one part's process: pid file, log, spawn, recognise, stop, wait |
| ``probes`` | readiness probes: brokers in the metadata, Redis PING, HTTP JSON |
| ``state`` | ``cluster.json``: the spec and pids ``up`` recorded, read back by later commands |
"""

from lukhas_context.ops.cluster.local import LocalCluster
from lukhas_context.ops.cluster.spec import ClusterSpec

__all__ = ["ClusterSpec", "LocalCluster"]
