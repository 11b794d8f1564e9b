"""Kafka with TLS and SASL: a broker started here with a ``SASL_SSL`` listener (PLAIN and
SCRAM) and an ``SSL`` listener that requires a client certificate, all on certificates this
test makes (``secured.py``). A worker, the client and the ``lukhas`` tools reach it through
``KafkaSecurity``, ``--kafka-config`` and the ``LUKHAS_KAFKA_*`` variables; a wrong password
or a certificate that does not verify is one clear error, at once."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from lukhas_context.streams.admin import ensure_topics
from lukhas_context.streams.client import ClientConfig, ContextClient
from lukhas_context.streams.exceptions import AdminError, PublishError
from lukhas_context.streams.security import KafkaSecurity
from lukhas_context.streams.topics import Topics

from .conftest import WorkerProcess, free_port, shell_worker
from .secured import ALICE, BOB, SecuredBroker

pytestmark = pytest.mark.integration

PARTITIONS = 3


@pytest.fixture(scope="module")
def broker(
    tmp_path_factory: pytest.TempPathFactory, free_ports: Callable[[int], int]
) -> Iterator[SecuredBroker]:
    base = free_ports(4)
    secured = SecuredBroker(tmp_path_factory.mktemp("secured"), base, base + 1, base + 2, base + 3)
    secured.start()
    try:
        yield secured
    finally:
        secured.stop()


def _scram(broker: SecuredBroker, password: str = BOB[1]) -> KafkaSecurity:
    return KafkaSecurity(
        "SASL_SSL", "SCRAM-SHA-256", BOB[0], password, str(broker.certs / "ca.pem")
    )


def _properties(path: Path, **settings: str) -> Path:
    path.write_text("# made by the test\n" + "".join(f"{k}={v}\n" for k, v in settings.items()))
    return path


def _lukhas(*args: str, env: dict[str, str], cwd: Path, check: bool = True,
            ) -> subprocess.CompletedProcess[str]:  # fmt: skip
    done = subprocess.run(
        [sys.executable, "-m", "lukhas_context.ops", *args], capture_output=True, text=True,
        env=env, cwd=cwd, timeout=180, check=False,
    )  # fmt: skip
    if check:
        assert done.returncode == 0, f"{args}: {done.returncode}\n{done.stdout}\n{done.stderr}"
    return done


def _clean_env(tmp_path: Path) -> dict[str, str]:
    """The environment without any Kafka or cluster setting of the caller's."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("LUKHAS_")}
    return {**env, "LUKHAS_DATA_DIR": str(tmp_path / "no-cluster")}


async def test_a_worker_the_client_and_the_tools_over_sasl_ssl(
    broker: SecuredBroker, tmp_path: Path
) -> None:
    prefix = f"sec{int(time.time() * 1000) % 10**9}"
    scram_file = _properties(
        tmp_path / "scram.properties",
        **{"security.protocol": "SASL_SSL", "sasl.mechanism": "SCRAM-SHA-256",
           "sasl.username": BOB[0], "sasl.password": BOB[1],
           "ssl.ca.location": str(broker.certs / "ca.pem")},
    )  # fmt: skip
    env = _clean_env(tmp_path)
    # The topics, by the tool compose runs, with the settings as a file.
    created = _lukhas("topics", "create", "--bootstrap", broker.sasl_ssl, "--kafka-config",
                      str(scram_file), "--topic-prefix", prefix, "--partitions", str(PARTITIONS),
                      "--json", env=env, cwd=tmp_path)  # fmt: skip
    assert Topics(prefix).events in json.loads(created.stdout)["created"]

    port = free_port()
    worker = WorkerProcess(
        [sys.executable, "-m", "lukhas_context.ops", "worker", "--bootstrap", broker.sasl_ssl,
         "--kafka-config", str(scram_file), "--state-dir", str(tmp_path / "state"),
         "--topic-prefix", prefix, "--group", f"{prefix}-group", "--api-port", str(port)],
        tmp_path / "worker.log", f"http://127.0.0.1:{port}",
    )  # fmt: skip
    worker.start()
    try:
        worker.wait_healthy(timeout_s=90)
        config = ClientConfig(broker.sasl_ssl, worker.url, Topics(prefix),
                              kafka_security=_scram(broker))  # fmt: skip
        async with ContextClient(config) as client:
            receipt = await client.put("sec:1", {"who": "bob", "n": 1})
            assert (await receipt.outcome(timeout=30)).status == "applied"
            got = await client.get("sec:1", min_offset=receipt, timeout=30)
            assert got.doc == {"who": "bob", "n": 1}
            async with client.watch(context_id="sec:1", start="earliest", idle_timeout=10) as w:
                changes = [change async for change in w]
            assert [c.doc for c in changes] == [{"who": "bob", "n": 1}]

        # The command line with one variable per setting (PLAIN as alice, this time).
        plain = {**env, "LUKHAS_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
                 "LUKHAS_KAFKA_SASL_MECHANISM": "PLAIN", "LUKHAS_KAFKA_SASL_USERNAME": ALICE[0],
                 "LUKHAS_KAFKA_SASL_PASSWORD": ALICE[1],
                 "LUKHAS_KAFKA_SSL_CA_LOCATION": str(broker.certs / "ca.pem"),
                 "LUKHAS_TOPIC_PREFIX": prefix}  # fmt: skip
        where = ["--bootstrap", broker.sasl_ssl, "--api", worker.url]
        _lukhas("put", "sec:2", '{"who": "alice"}', "--wait", *where, env=plain, cwd=tmp_path)
        got2 = _lukhas("get", "sec:2", "--json", "--api", worker.url, env=plain, cwd=tmp_path)
        assert json.loads(got2.stdout)["doc"] == {"who": "alice"}
        wal = _lukhas("inspect", "wal", "--json", "--bootstrap", broker.sasl_ssl, env=plain,
                      cwd=tmp_path)  # fmt: skip
        ids = {json.loads(line)["context_id"] for line in wal.stdout.splitlines()}
        assert {"sec:1", "sec:2"} <= ids
        # Kafka's own Java tool, given the same settings as its --command-config.
        listed = _lukhas("transactions", "list", "--json", "--bootstrap", broker.sasl_ssl,
                         env=plain, cwd=tmp_path)  # fmt: skip
        assert isinstance(json.loads(listed.stdout), list)
    finally:
        assert worker.terminate() == 0, worker.log.read_text()[-3000:]
    log = worker.log.read_text()
    assert "from Kafka SASL_SSL (SCRAM-SHA-256 as bob) at" in log, log[-3000:]
    assert BOB[1] not in log  # never the password


async def test_a_wrong_password_is_one_clear_error_at_once(
    broker: SecuredBroker, tmp_path: Path
) -> None:
    started = time.monotonic()
    with pytest.raises(AdminError, match="refuses the SASL login") as caught:
        await ensure_topics(broker.sasl_ssl, Topics("wrongpw").specs(1), timeout_s=30,
                            security=_scram(broker, "not-the-password"))  # fmt: skip
    assert time.monotonic() - started < 10, "waited out the timeout instead"
    assert "not-the-password" not in str(caught.value)

    config = ClientConfig(broker.sasl_ssl, None, Topics("wrongpw"), timeout_s=8,
                          kafka_security=_scram(broker, "not-the-password"))  # fmt: skip
    async with ContextClient(config) as client:
        with pytest.raises(PublishError, match="SASL") as put_error:
            await client.put("x:1", {"a": 1})
    assert "not-the-password" not in str(put_error.value)

    env = {**_clean_env(tmp_path), "LUKHAS_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
           "LUKHAS_KAFKA_SASL_MECHANISM": "SCRAM-SHA-512", "LUKHAS_KAFKA_SASL_USERNAME": BOB[0],
           "LUKHAS_KAFKA_SASL_PASSWORD": "not-the-password",
           "LUKHAS_KAFKA_SSL_CA_LOCATION": str(broker.certs / "ca.pem")}  # fmt: skip
    done = _lukhas("topics", "create", "--bootstrap", broker.sasl_ssl, "--topic-prefix", "wp",
                   env=env, cwd=tmp_path, check=False)  # fmt: skip
    assert done.returncode == 1, done
    assert "refuses the SASL login" in done.stderr and "Traceback" not in done.stderr
    assert "not-the-password" not in done.stderr

    # A worker given a wrong password ends at start, saying why (not "Unable to bootstrap").
    worker = subprocess.run(  # noqa: ASYNC221 (the test waits for it, as a user would)
        [sys.executable, "-m", "lukhas_context.ops", "worker", "--bootstrap", broker.sasl_ssl,
         "--state-dir", str(tmp_path / "state"), "--api-port", str(free_port())],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120, check=False,
    )  # fmt: skip
    assert worker.returncode != 0
    assert "refuses the SASL login" in worker.stderr, worker.stderr[-3000:]
    assert "not-the-password" not in worker.stderr


async def test_a_certificate_that_does_not_verify_is_refused(
    broker: SecuredBroker, tmp_path: Path
) -> None:
    # The system's CAs do not know the test's CA: the broker's certificate does not verify.
    no_ca = KafkaSecurity("SASL_SSL", "PLAIN", *ALICE)
    with pytest.raises(AdminError, match="certificate that does not verify"):
        await ensure_topics(broker.sasl_ssl, Topics("noca").specs(1), timeout_s=20,
                            security=no_ca)  # fmt: skip


async def test_mutual_tls_with_a_client_certificate(broker: SecuredBroker) -> None:
    certs = broker.certs
    mtls = KafkaSecurity("SSL", ssl_cafile=str(certs / "ca.pem"),
                         ssl_certfile=str(certs / "client.crt"),
                         ssl_keyfile=str(certs / "client.key"))  # fmt: skip
    topics = Topics(f"mtls{int(time.time() * 1000) % 10**9}")
    await ensure_topics(broker.ssl, topics.specs(1), timeout_s=30, security=mtls)
    async with ContextClient(ClientConfig(broker.ssl, None, topics, kafka_security=mtls)) as c:
        receipt = await c.put("m:1", {"tls": "mutual"})
        assert receipt.offset == 0

    # The listener requires a certificate: without one the broker hangs up.
    one_way = KafkaSecurity("SSL", ssl_cafile=str(certs / "ca.pem"))
    with pytest.raises(AdminError, match="closes the connection"):
        await ensure_topics(broker.ssl, topics.specs(1), timeout_s=4, security=one_way)


README = Path(__file__).resolve().parents[2] / "README.md"


def test_the_readmes_secured_kafka_lines_run_as_written(
    broker: SecuredBroker, tmp_path: Path
) -> None:
    """The section's properties file and its three command lines, against this broker: its
    address for ``kafka-1:9093``, the test's CA for ``ca.pem`` (the file is written into the
    directory the commands run in, as the README's reader would)."""
    text = README.read_text()
    section = text[text.index("## A secured Kafka") : text.index("## Docker compose")]
    properties = re.search(r"```properties\n(.*?)```", section, re.DOTALL)
    commands = re.search(r"```sh\n(.*?)```", section, re.DOTALL)
    assert properties is not None and commands is not None
    (tmp_path / "client.properties").write_text(properties.group(1))
    shutil.copy(broker.certs / "ca.pem", tmp_path / "ca.pem")
    env = {**_clean_env(tmp_path), "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    lines = [line for line in commands.group(1).splitlines() if line.strip()]
    assert len(lines) == 3, lines
    topics_line, worker_line, put_line = (line.replace("kafka-1:9093", broker.sasl_ssl)
                                          for line in lines)  # fmt: skip
    _shell(topics_line, env, tmp_path)
    worker = shell_worker(worker_line, env, tmp_path)
    try:
        worker.wait_healthy(timeout_s=90)
        done = _shell(put_line + " --wait --api " + worker.url, env, tmp_path)
        assert "applied" in done.stdout, done.stdout
    finally:
        worker.terminate()


def _shell(line: str, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(["sh", "-c", line], capture_output=True, text=True, env=env, cwd=cwd,
                          timeout=180, check=False)  # fmt: skip
    assert done.returncode == 0, f"{line}: {done.returncode}\n{done.stdout}\n{done.stderr}"
    return done
