"""The README's Python example runs as written, against this test's worker and topics."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from lukhas_context.streams.client import ClientConfig, ContextClient
from lukhas_context.streams.exceptions import ContextNotFoundError
from lukhas_context.streams.topics import Topics

pytestmark = pytest.mark.integration

README = Path(__file__).resolve().parents[2] / "README.md"


def test_readme_opens_with_the_two_commands() -> None:
    text = README.read_text()
    first_block = re.search(r"```sh\n(.*?)```", text, re.DOTALL)
    assert first_block is not None
    commands = [line.split("#")[0].strip() for line in first_block.group(1).splitlines()]
    assert commands == ["make up", "make test"]


async def test_readme_client_example_runs(start_worker, cluster, topics) -> None:
    worker = await start_worker()
    code = re.search(r"```python\n(.*?)```", README.read_text(), re.DOTALL)
    assert code is not None
    source = code.group(1)
    assert 'bootstrap="127.0.0.1:19092", api_url="http://127.0.0.1:18080"' in source
    source = source.replace(
        'bootstrap="127.0.0.1:19092", api_url="http://127.0.0.1:18080"',
        f'bootstrap="{cluster.bootstrap}", api_url="{worker.url}", '
        f'topics=Topics("{topics.prefix}")',
    )
    # The example ends with asyncio.run(main()); we are inside a loop, so await main() instead.
    source = source.replace("asyncio.run(main())", "")
    namespace: dict[str, object] = {"Topics": Topics}
    exec(compile(source, str(README), "exec"), namespace)
    await namespace["main"]()  # type: ignore[operator]
    async with ContextClient(ClientConfig(cluster.bootstrap, worker.url, topics)) as client:
        receipt = await client.put("readme:probe", {"after": "the example"})
        await client.get("readme:probe", min_offset=receipt, timeout=30)
        with pytest.raises(ContextNotFoundError):  # the example ends by deleting its context
            await client.get("agent:42")
