"""The sync face of the client, from plain (non-async) code, against a worker process."""

from __future__ import annotations

import pytest

from lukhas_context.streams.client import ClientConfig, SyncContextClient
from lukhas_context.streams.exceptions import ContextNotFoundError, InvalidTTLError

pytestmark = pytest.mark.integration


def test_sync_client_put_get_delete(worker_process, cluster, topics) -> None:
    worker_process.start()
    worker_process.wait_healthy()
    config = ClientConfig(cluster.bootstrap, worker_process.url, topics)
    with SyncContextClient(config) as client:
        receipt = client.put("sync:1", {"hello": "world"}, ttl=30)
        ctx = client.get("sync:1", min_offset=receipt, timeout=30)
        assert (ctx.version, ctx.doc) == (1, {"hello": "world"})
        with pytest.raises(InvalidTTLError):
            client.put("sync:1", {}, ttl=0)
        receipt = client.delete("sync:1")
        with pytest.raises(ContextNotFoundError):
            client.get("sync:1", min_offset=receipt, timeout=30)
    assert worker_process.terminate() == 0
