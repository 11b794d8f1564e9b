"""``KafkaSecurity``: the settings that go together and those that do not, the properties
file and the variables they come from, what aiokafka and Kafka's Java tools are given, and
that every Kafka client the package makes is given them (read from the source)."""

from __future__ import annotations

import ast
import inspect
import ssl
import subprocess
from pathlib import Path

import pytest

from lukhas_context.ops import config as ops_config
from lukhas_context.ops.cluster import probes, remote
from lukhas_context.ops.transactions import TransactionTool, _properties_value
from lukhas_context.processors import members
from lukhas_context.streams import admin, health, kafka, watch
from lukhas_context.streams.config import ClientConfig
from lukhas_context.streams.exceptions import InvalidConfigError
from lukhas_context.streams.security import (
    PLAINTEXT,
    PROPERTY_KEYS,
    KafkaSecurity,
    read_properties,
)

ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A self-signed CA certificate and a client certificate with its key (openssl)."""
    d = tmp_path_factory.mktemp("certs")
    for name in ("ca", "client"):
        subprocess.run(
            ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout",
             f"{name}.key", "-out", f"{name}.pem", "-days", "1", "-subj", f"/CN={name}"],
            cwd=d, check=True, capture_output=True, timeout=60,
        )  # fmt: skip
    return d


def test_the_default_is_plaintext_and_gives_aiokafka_nothing_else() -> None:
    assert KafkaSecurity() == PLAINTEXT
    assert PLAINTEXT.aiokafka_options() == {"security_protocol": "PLAINTEXT"}
    assert PLAINTEXT.describe() == "PLAINTEXT"
    assert ClientConfig("k:9092").kafka_security == PLAINTEXT


@pytest.mark.parametrize(
    ("fields", "says"),
    [
        ({"protocol": "sasl_ssl"}, "security.protocol must be one of"),
        ({"protocol": "SASL_SSL"}, "needs sasl.mechanism, sasl.username, sasl.password"),
        ({"protocol": "SASL_SSL", "sasl_mechanism": "PLAIN", "sasl_username": "a"},
         "needs sasl.password"),
        ({"protocol": "SASL_SSL", "sasl_mechanism": "GSSAPI", "sasl_username": "a",
          "sasl_password": "p"}, "sasl.mechanism must be one of"),
        ({"sasl_username": "a", "sasl_password": "p"},
         "sasl.username, sasl.password set but security.protocol is PLAINTEXT"),
        ({"protocol": "SSL", "sasl_mechanism": "PLAIN"}, "set security.protocol to SASL_SSL"),
        ({"protocol": "SASL_PLAINTEXT", "sasl_mechanism": "PLAIN", "sasl_username": "a",
          "sasl_password": "p", "ssl_cafile": "/ca.pem"}, "set security.protocol to SSL"),
        ({"ssl_check_hostname": False}, "uses no TLS"),
        ({"protocol": "SSL", "ssl_keyfile": "/k.pem"}, "needs ssl.certificate.location"),
        ({"protocol": "SSL", "ssl_key_password": "x"}, "needs ssl.certificate.location"),
        ({"protocol": "SSL", "ssl_cafile": ""}, "non-empty str"),
        ({"protocol": "SSL", "ssl_cafile": "/no/such/ca.pem"}, "ssl.ca.location /no/such"),
        ({"protocol": "SSL", "ssl_check_hostname": "no"}, "must be a bool"),
    ],
)  # fmt: skip
def test_settings_that_do_not_go_together_are_refused(fields: dict[str, object], says: str
                                                      ) -> None:  # fmt: skip
    with pytest.raises(InvalidConfigError, match=says):
        KafkaSecurity(**fields)  # type: ignore[arg-type]


def test_a_file_that_is_not_a_certificate_is_refused_when_made(tmp_path: Path) -> None:
    bogus = tmp_path / "ca.pem"
    bogus.write_text("not a certificate\n")
    with pytest.raises(InvalidConfigError, match=f"ssl.ca.location {bogus}"):
        KafkaSecurity("SSL", ssl_cafile=str(bogus))


def test_sasl_and_tls_options_for_aiokafka(ca: Path) -> None:
    scram = KafkaSecurity("SASL_SSL", "SCRAM-SHA-512", "bob", "s3cret", str(ca / "ca.pem"))
    options = scram.aiokafka_options()
    assert {k: v for k, v in options.items() if k != "ssl_context"} == {
        "security_protocol": "SASL_SSL",
        "sasl_mechanism": "SCRAM-SHA-512",
        "sasl_plain_username": "bob",
        "sasl_plain_password": "s3cret",
    }
    context = options["ssl_context"]
    assert isinstance(context, ssl.SSLContext)
    assert context.check_hostname and context.verify_mode == ssl.CERT_REQUIRED
    # A fresh context each time: a certificate rotated on disk is read by the next client.
    assert scram.aiokafka_options()["ssl_context"] is not context

    plain_text = KafkaSecurity("SASL_PLAINTEXT", "PLAIN", "a", "p").aiokafka_options()
    assert "ssl_context" not in plain_text

    mtls = KafkaSecurity("SSL", ssl_cafile=str(ca / "ca.pem"), ssl_certfile=str(ca / "client.pem"),
                         ssl_keyfile=str(ca / "client.key"), ssl_check_hostname=False)  # fmt: skip
    assert mtls.aiokafka_options()["ssl_context"].check_hostname is False


def test_secrets_never_show(ca: Path) -> None:
    s = KafkaSecurity("SASL_SSL", "PLAIN", "alice", "pa55word", str(ca / "ca.pem"))
    assert "pa55word" not in repr(s) and "pa55word" not in s.describe()
    assert s.describe() == "SASL_SSL (PLAIN as alice)"
    assert "pa55word" not in repr(ClientConfig("k:1", kafka_security=s))


def test_properties_use_librdkafka_names(ca: Path) -> None:
    s = KafkaSecurity.from_properties({
        "security.protocol": "sasl_ssl", "sasl.mechanisms": "scram-sha-256",
        "sasl.username": "bob", "sasl.password": " spaced ", "ssl.ca.location": str(ca / "ca.pem"),
        "ssl.endpoint.identification.algorithm": "none",
    })  # fmt: skip
    assert (s.protocol, s.sasl_mechanism, s.sasl_password) == (
        "SASL_SSL",
        "SCRAM-SHA-256",
        " spaced ",
    )
    assert s.ssl_check_hostname is False
    assert set(PROPERTY_KEYS.values()) == {f.name for f in _fields(KafkaSecurity)}
    with pytest.raises(InvalidConfigError, match=r"unknown Kafka setting 'sasl\.jaas\.config' "
                       r"\(my\.properties\): the settings are security\.protocol"):  # fmt: skip
        KafkaSecurity.from_properties({"sasl.jaas.config": "x"}, "my.properties")
    with pytest.raises(InvalidConfigError, match="https or none"):
        KafkaSecurity.from_properties({"ssl.endpoint.identification.algorithm": "yes"})
    with pytest.raises(InvalidConfigError, match=r"needs sasl.password \(f\)"):
        KafkaSecurity.from_properties({"security.protocol": "SASL_SSL", "sasl.mechanism": "PLAIN",
                                       "sasl.username": "u"}, "f")  # fmt: skip


def _fields(cls: type) -> list[inspect.Parameter]:
    return list(inspect.signature(cls).parameters.values())


def test_a_properties_file_is_read_strictly(tmp_path: Path) -> None:
    good = tmp_path / "client.properties"
    good.write_text("# a comment\n! another\n\n security.protocol = SASL_SSL \n"
                    "sasl.password=a=b#c\n")  # fmt: skip
    assert read_properties(good) == {"security.protocol": "SASL_SSL", "sasl.password": "a=b#c"}
    cases = {
        "no-sep": ("just words\n", "not a key=value line"),
        "no-key": ("=value\n", "not a key=value line"),
        "twice": ("a=1\na=2\n", "a is set twice"),
    }
    for name, (text, says) in cases.items():
        path = tmp_path / name
        path.write_text(text)
        with pytest.raises(InvalidConfigError, match=says):
            read_properties(path)
    secret = tmp_path / "secret"
    secret.write_text("sasl.password=hunter2\nhunter2-line-without-equals\n")
    with pytest.raises(InvalidConfigError) as caught:
        read_properties(secret)
    assert "hunter2" not in str(caught.value).replace(str(tmp_path), "")
    huge = tmp_path / "huge"
    huge.write_bytes(b"#" * (64 * 1024 + 1))
    with pytest.raises(InvalidConfigError, match="larger than 64 KiB"):
        read_properties(huge)
    binary = tmp_path / "binary"
    binary.write_bytes(b"\xff\xfe=\x00")
    with pytest.raises(InvalidConfigError, match="not UTF-8"):
        read_properties(binary)
    with pytest.raises(InvalidConfigError, match="cannot read the Kafka config"):
        read_properties(tmp_path / "missing")
    with pytest.raises(InvalidConfigError, match="cannot read the Kafka config"):
        read_properties(tmp_path)


def test_the_environment_gives_a_file_and_one_variable_per_setting(
    tmp_path: Path, ca: Path
) -> None:
    assert ops_config.kafka_variable("ssl.ca.location") == "LUKHAS_KAFKA_SSL_CA_LOCATION"
    assert ops_config.kafka_security({}) == PLAINTEXT
    path = tmp_path / "k.properties"
    path.write_text(f"security.protocol=SASL_SSL\nsasl.mechanism=PLAIN\nsasl.username=alice\n"
                    f"ssl.ca.location={ca / 'ca.pem'}\n")  # fmt: skip
    env = {"LUKHAS_KAFKA_CONFIG": str(path), "LUKHAS_KAFKA_SASL_PASSWORD": "from-env",
           "LUKHAS_KAFKA_SASL_USERNAME": "alice", "LUKHAS_KAFKA_SSL_KEY_LOCATION": ""}  # fmt: skip
    s = ops_config.kafka_security(env)
    assert (s.sasl_username, s.sasl_password) == ("alice", "from-env")
    with pytest.raises(InvalidConfigError, match=r"set by both .* and LUKHAS_KAFKA_SASL_USERNAME"):
        ops_config.kafka_security({**env, "LUKHAS_KAFKA_SASL_USERNAME": "bob"})
    with pytest.raises(InvalidConfigError, match=r"needs sasl\.password"):
        ops_config.kafka_security({"LUKHAS_KAFKA_CONFIG": str(path)})
    only_vars = {"LUKHAS_KAFKA_SECURITY_PROTOCOL": "SSL",
                 "LUKHAS_KAFKA_SSL_CA_LOCATION": str(ca / "ca.pem")}  # fmt: skip
    assert ops_config.kafka_security(only_vars).protocol == "SSL"


def test_javas_tools_get_the_same_settings(tmp_path: Path, ca: Path) -> None:
    s = KafkaSecurity("SASL_SSL", "SCRAM-SHA-256", 'b"o\\b', "p w", str(ca / "ca.pem"),
                      ssl_check_hostname=False)  # fmt: skip
    props = s.java_properties()
    assert props["sasl.jaas.config"] == (
        "org.apache.kafka.common.security.scram.ScramLoginModule required "
        'username="b\\"o\\\\b" password="p w";'
    )
    assert props["ssl.truststore.type"] == "PEM"
    assert props["ssl.endpoint.identification.algorithm"] == ""
    plain = KafkaSecurity("SASL_PLAINTEXT", "PLAIN", "a", "p").java_properties()
    assert "PlainLoginModule" in plain["sasl.jaas.config"] and "ssl.truststore.type" not in plain
    with pytest.raises(InvalidConfigError, match="one PEM keystore"):
        KafkaSecurity("SSL", ssl_certfile=str(ca / "client.pem"),
                      ssl_keyfile=str(ca / "client.key")).java_properties()  # fmt: skip
    assert _properties_value("a\\b\nc") == "a\\\\b\\nc"
    assert _properties_value(" lead") == "\\ lead"

    tool = TransactionTool.create(_Dist(), "k:1", tmp_path, 60.0, s)  # type: ignore[arg-type]
    assert tool.command_config is not None
    assert tool.command_config.stat().st_mode & 0o777 == 0o600  # it holds the password
    assert "security.protocol=SASL_SSL" in tool.command_config.read_text()
    assert TransactionTool.create(_Dist(), "k:1", tmp_path, 60.0).command_config is None  # type: ignore[arg-type]


class _Dist:
    java = "java"
    classpath = ""


#: Functions that take the cluster's security with a default of plaintext (public helpers):
#: every call in the package must still say which.
_DEFAULTED = {
    "ensure_topics": admin.ensure_topics,
    "delete_topics": admin.delete_topics,
    "delete_records_below": admin.delete_records_below,
    "cluster_brokers": admin.cluster_brokers,
    "wait_group_coordinator": admin.wait_group_coordinator,
    "partition_count": admin.partition_count,
    "explain": health.explain,
    "unreachable": health.unreachable,
    "live_brokers": probes.live_brokers,
    "remote_status": remote.remote_status,
    "Membership": members.Membership,
    "Watcher": watch.Watcher,
    "create": TransactionTool.create,
}


def _calls(
    folders: tuple[str, ...] = ("streams", "processors", "ops", "state"),
) -> list[tuple[Path, ast.Call, str]]:
    found = []
    for package in folders:
        for path in (ROOT / package).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if isinstance(node, ast.Call):
                    f = node.func
                    if isinstance(f, ast.Name):
                        found.append((path, node, f.id))
                    elif isinstance(f, ast.Attribute) and (
                        not isinstance(f.value, ast.Name)
                        or f.value.id in ("admin", "health", "kafka", "TransactionTool")
                    ):  # a module's function, not a method of an object that shares its name
                        found.append((path, node, f.attr))
    return found


def test_every_kafka_client_of_the_package_is_given_the_security_settings() -> None:
    """aiokafka's clients are made in ``streams.kafka`` only (where ``security`` is a
    required keyword), and each call of a helper that defaults to plaintext says which."""
    aiokafka_made = [
        f"{path.relative_to(ROOT)}:{node.lineno}"
        for path, node, name in _calls()
        if name in ("AIOKafkaProducer", "AIOKafkaConsumer", "AIOKafkaAdminClient",
                    "AIOKafkaClient", "create_conn")
        and path.name not in ("kafka.py", "health.py", "producer.py")
    ]  # fmt: skip
    assert aiokafka_made == []
    for factory in (kafka.producer, kafka.consumer, kafka.admin_client, kafka.bare_client):
        parameter = inspect.signature(factory).parameters["security"]
        assert parameter.kind is inspect.Parameter.KEYWORD_ONLY
        assert parameter.default is inspect.Parameter.empty
    unsaid = []
    for path, node, name in _calls():
        fn = _DEFAULTED.get(name)
        if fn is None or path.name in ("admin.py", "health.py", "probes.py"):
            continue
        if any(isinstance(a, ast.Starred) for a in node.args) or any(
            k.arg is None for k in node.keywords
        ):
            unsaid.append(f"{path.relative_to(ROOT)}:{node.lineno} (*args: check by hand)")
            continue
        names = list(inspect.signature(fn).parameters)
        given = set(names[: len(node.args)]) | {k.arg for k in node.keywords}
        if "security" not in given:
            unsaid.append(f"{path.relative_to(ROOT)}:{node.lineno} {name}")
    assert unsaid == []


def test_every_call_of_a_factory_anywhere_says_which_security() -> None:
    """The tests and benchmarks too: the keyword is required, and a call without it fails
    only when it runs (mypy does not read the tests)."""
    factories = {"producer", "consumer", "admin_client", "bare_client"}
    unsaid = [
        f"{path.relative_to(ROOT)}:{node.lineno}"
        for path, node, name in _calls(("streams", "processors", "ops", "tests", "benchmarks"))
        if name in factories
        and isinstance(node.func, ast.Attribute)
        and isinstance(node.func.value, ast.Name)
        and node.func.value.id == "kafka"
        and "security" not in {k.arg for k in node.keywords}
    ]
    assert unsaid == []
