"""A Kafka broker with secured listeners, for the security tests: certificates the test makes
itself (openssl), then one KRaft node with

- ``SASL_SSL``: SASL PLAIN (user ``alice``) and SCRAM-SHA-256/512 (user ``bob``, its
  credentials written when the log dir is formatted) over TLS;
- ``SSL``: TLS that requires a client certificate signed by the test's CA (mutual TLS);
- ``PLAINTEXT``: only between the node and itself (``inter.broker.listener.name``).

The jars are the project's own Maven-fetched Kafka (``ensure_kafka``)."""

from __future__ import annotations

import base64
import subprocess
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from lukhas_context.ops.cluster.probes import live_brokers
from lukhas_context.ops.kafka_dist import DEFAULT_VERSION, ensure_kafka, log4j_config

from .conftest import stop_process

HOST = "127.0.0.1"
ALICE = ("alice", "alice-secret")  # SASL PLAIN
BOB = ("bob", "bob-secret")  # SCRAM-SHA-256 and SCRAM-SHA-512
PLAIN_MODULE = "org.apache.kafka.common.security.plain.PlainLoginModule"
SCRAM_MODULE = "org.apache.kafka.common.security.scram.ScramLoginModule"


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def make_certificates(d: Path) -> None:
    """``ca.pem`` (a CA made now), ``broker.pem`` (the broker's PKCS#8 key and its
    certificate for 127.0.0.1 and localhost, signed by the CA: Kafka's PEM keystore) and
    ``client.crt``/``client.key`` (a client certificate signed by the CA)."""
    d.mkdir(parents=True, exist_ok=True)
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key",
             "-out", "ca.pem", "-days", "2", "-subj", "/CN=lukhas-test-ca",
             "-addext", "basicConstraints=critical,CA:TRUE",
             "-addext", "keyUsage=critical,keyCertSign,cRLSign", cwd=d)  # fmt: skip
    for name, usage, san in (
        ("broker", "serverAuth", "subjectAltName=IP:127.0.0.1,DNS:localhost\n"),
        ("client", "clientAuth", ""),
    ):
        _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key",
                 "-out", f"{name}.csr", "-subj", f"/CN=lukhas-test-{name}", cwd=d)  # fmt: skip
        (d / f"{name}.ext").write_text(f"{san}extendedKeyUsage={usage}\n")
        _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
                 "-CAcreateserial", "-out", f"{name}.crt", "-days", "2",
                 "-extfile", f"{name}.ext", cwd=d)  # fmt: skip
    (d / "broker.pem").write_text((d / "broker.key").read_text() + (d / "broker.crt").read_text())


def _cluster_id() -> str:
    """22 characters of base64url (a Kafka cluster id), never starting with "-"."""
    while True:
        raw = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not raw.startswith("-"):
            return raw


@dataclass
class SecuredBroker:
    root: Path
    plaintext_port: int
    controller_port: int
    sasl_ssl_port: int
    ssl_port: int
    proc: subprocess.Popen[bytes] | None = None

    @property
    def sasl_ssl(self) -> str:
        return f"{HOST}:{self.sasl_ssl_port}"

    @property
    def ssl(self) -> str:
        return f"{HOST}:{self.ssl_port}"

    @property
    def certs(self) -> Path:
        return self.root / "certs"

    def properties(self) -> str:
        p, c, s, t = self.plaintext_port, self.controller_port, self.sasl_ssl_port, self.ssl_port
        certs = self.certs
        lines = {
            "process.roles": "broker,controller",
            "node.id": "1",
            "controller.quorum.voters": f"1@{HOST}:{c}",
            "listeners": f"PLAINTEXT://{HOST}:{p},CONTROLLER://{HOST}:{c},"
            f"SASL_SSL://{HOST}:{s},SSL://{HOST}:{t}",
            "advertised.listeners": f"PLAINTEXT://{HOST}:{p},SASL_SSL://{HOST}:{s},"
            f"SSL://{HOST}:{t}",
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "PLAINTEXT",
            "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT,"
            "SASL_SSL:SASL_SSL,SSL:SSL",
            "sasl.enabled.mechanisms": "PLAIN,SCRAM-SHA-256,SCRAM-SHA-512",
            "listener.name.sasl_ssl.plain.sasl.jaas.config": f"{PLAIN_MODULE} required "
            f'user_{ALICE[0]}="{ALICE[1]}";',
            "listener.name.sasl_ssl.scram-sha-256.sasl.jaas.config": f"{SCRAM_MODULE} required;",
            "listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config": f"{SCRAM_MODULE} required;",
            "ssl.keystore.type": "PEM",
            "ssl.keystore.location": str(certs / "broker.pem"),
            "ssl.truststore.type": "PEM",
            "ssl.truststore.location": str(certs / "ca.pem"),
            "listener.name.ssl.ssl.client.auth": "required",
            "log.dirs": str(self.root / "logs"),
            "num.partitions": "1",
            "auto.create.topics.enable": "false",
            "group.initial.rebalance.delay.ms": "0",
            "offsets.topic.num.partitions": "3",
            "offsets.topic.replication.factor": "1",
            "transaction.state.log.num.partitions": "3",
            "transaction.state.log.replication.factor": "1",
            "transaction.state.log.min.isr": "1",
            "transaction.max.timeout.ms": "60000",
        }
        return "".join(f"{k}={v}\n" for k, v in lines.items())

    def start(self, timeout_s: float = 90.0) -> None:
        make_certificates(self.certs)
        dist = ensure_kafka(DEFAULT_VERSION)
        log4j = log4j_config(self.root / "log4j2.properties")
        props = self.root / "server.properties"
        props.write_text(self.properties())
        base = [dist.java, "-cp", dist.classpath, f"-Dlog4j2.configurationFile={log4j}"]
        scram = [f"{m}=[name={BOB[0]},password={BOB[1]}]" for m in ("SCRAM-SHA-256",
                                                                     "SCRAM-SHA-512")]  # fmt: skip
        subprocess.run(
            [*base, "kafka.tools.StorageTool", "format", f"--cluster-id={_cluster_id()}",
             "-c", str(props), *(arg for s in scram for arg in ("--add-scram", s))],
            check=True, capture_output=True, timeout=120,
        )  # fmt: skip
        log = (self.root / "kafka.log").open("ab")
        self.proc = subprocess.Popen(
            [dist.java, "-Xmx384m", "-Xms384m", f"-Dlog4j2.configurationFile={log4j}",
             "-cp", dist.classpath, "kafka.Kafka", str(props)],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
        deadline = time.monotonic() + timeout_s
        while live_brokers(f"{HOST}:{self.plaintext_port}") < 1:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                tail = (self.root / "kafka.log").read_text(errors="replace")[-4000:]
                self.stop()
                raise AssertionError(f"the secured broker did not start:\n{tail}")
            time.sleep(0.5)

    def stop(self) -> None:
        stop_process(self.proc)
