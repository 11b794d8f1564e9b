"""``KafkaSecurity``: how the package's Kafka clients authenticate and encrypt (TLS, SASL
PLAIN and SCRAM), given once in ``ClientConfig`` or ``WorkerConfig`` and applied by every
producer, consumer and admin client the package makes (``streams.kafka``).

Settings are named as librdkafka names them (``security.protocol``, ``sasl.mechanism``,
``sasl.username``, ``sasl.password``, ``ssl.ca.location``, ``ssl.certificate.location``,
``ssl.key.location``, ``ssl.key.password``, ``ssl.endpoint.identification.algorithm``): the
names of the ``client.properties`` files that kcat and confluent-kafka already read.
``read_properties`` reads such a file, ``KafkaSecurity.from_properties`` builds the settings
from one (``ops.config`` adds the ``LUKHAS_KAFKA_*`` variables to it).

Safety rules, each an ``InvalidConfigError`` when the config is made:

- SASL or TLS settings under a protocol that would not use them are refused (a password set
  while the protocol stayed ``PLAINTEXT`` is a mistake, never silently ignored);
- a SASL protocol needs a mechanism, a user name and a password;
- a server's certificate is always verified (against ``ssl.ca.location``, else the system's
  CAs), and so is its host name unless ``ssl.endpoint.identification.algorithm`` is ``none``.
"""

from __future__ import annotations

import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lukhas_context.streams.exceptions import InvalidConfigError

__all__ = [
    "PLAINTEXT",
    "PROPERTY_KEYS",
    "PROTOCOLS",
    "SASL_MECHANISMS",
    "KafkaSecurity",
    "read_properties",
]

PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
SASL_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")

#: The settings by their property name (librdkafka's), and the field each sets.
PROPERTY_KEYS: dict[str, str] = {
    "security.protocol": "protocol",
    "sasl.mechanism": "sasl_mechanism",
    "sasl.username": "sasl_username",
    "sasl.password": "sasl_password",
    "ssl.ca.location": "ssl_cafile",
    "ssl.certificate.location": "ssl_certfile",
    "ssl.key.location": "ssl_keyfile",
    "ssl.key.password": "ssl_key_password",
    "ssl.endpoint.identification.algorithm": "ssl_check_hostname",
}
#: librdkafka's other spelling of a key, taken as the key.
_ALIASES = {"sasl.mechanisms": "sasl.mechanism"}
#: The largest properties file read (a secret file of a few lines; no megabytes of anything).
MAX_PROPERTIES_BYTES = 64 * 1024


@dataclass(frozen=True, slots=True)
class KafkaSecurity:
    """How to reach a secured Kafka; the default (``PLAINTEXT``) is neither TLS nor SASL.

    ``protocol``: ``PLAINTEXT``, ``SSL``, ``SASL_PLAINTEXT`` or ``SASL_SSL``.
    ``sasl_mechanism``: ``PLAIN``, ``SCRAM-SHA-256`` or ``SCRAM-SHA-512``, with
    ``sasl_username`` and ``sasl_password``. ``ssl_cafile``: the CA certificates (PEM) that
    sign the brokers' certificates (None: the system's). ``ssl_certfile`` and ``ssl_keyfile``:
    this client's own certificate and key (PEM), for brokers that ask for one (mutual TLS);
    ``ssl_key_password`` if the key is encrypted. Passwords are never printed
    (``repr=False``)."""

    protocol: str = "PLAINTEXT"
    sasl_mechanism: str | None = None
    sasl_username: str | None = None
    sasl_password: str | None = field(default=None, repr=False)
    ssl_cafile: str | None = None
    ssl_certfile: str | None = None
    ssl_keyfile: str | None = None
    ssl_key_password: str | None = field(default=None, repr=False)
    ssl_check_hostname: bool = True

    def __post_init__(self) -> None:
        if self.protocol not in PROTOCOLS:
            raise InvalidConfigError(
                f"security.protocol must be one of {', '.join(PROTOCOLS)}, got "
                f"{str(self.protocol)[:40]!r}"
            )
        sasl = {
            "sasl.mechanism": self.sasl_mechanism,
            "sasl.username": self.sasl_username,
            "sasl.password": self.sasl_password,
        }
        tls = {
            "ssl.ca.location": self.ssl_cafile,
            "ssl.certificate.location": self.ssl_certfile,
            "ssl.key.location": self.ssl_keyfile,
            "ssl.key.password": self.ssl_key_password,
        }
        for name, value in {**sasl, **tls}.items():
            if value is not None and (not isinstance(value, str) or not value):
                raise InvalidConfigError(f"{name} must be a non-empty str")
        if not isinstance(self.ssl_check_hostname, bool):
            raise InvalidConfigError("ssl_check_hostname must be a bool")
        if self.uses_sasl:
            missing = [name for name, value in sasl.items() if value is None]
            if missing:
                raise InvalidConfigError(
                    f"security.protocol {self.protocol} needs {', '.join(missing)}"
                )
            if self.sasl_mechanism not in SASL_MECHANISMS:
                raise InvalidConfigError(
                    f"sasl.mechanism must be one of {', '.join(SASL_MECHANISMS)}, got "
                    f"{str(self.sasl_mechanism)[:40]!r}"
                )
        else:
            _refuse_unused(sasl, self.protocol, "SASL_SSL")
        if self.uses_tls:
            if self.ssl_keyfile is not None and self.ssl_certfile is None:
                raise InvalidConfigError("ssl.key.location needs ssl.certificate.location")
            if self.ssl_key_password is not None and self.ssl_certfile is None:
                raise InvalidConfigError("ssl.key.password needs ssl.certificate.location")
            self.ssl_context()  # files that cannot be read are refused now, not at a connect
        else:
            _refuse_unused(tls, self.protocol, "SSL or SASL_SSL")
            if not self.ssl_check_hostname:
                raise InvalidConfigError(
                    f"ssl.endpoint.identification.algorithm is set but security.protocol is "
                    f"{self.protocol}, which uses no TLS"
                )

    @property
    def uses_sasl(self) -> bool:
        return self.protocol.startswith("SASL_")

    @property
    def uses_tls(self) -> bool:
        return self.protocol.endswith("SSL")

    def describe(self) -> str:
        """One line for logs and errors, never a secret: ``SASL_SSL (SCRAM-SHA-256 as
        alice)``."""
        if not self.uses_sasl:
            return self.protocol
        return f"{self.protocol} ({self.sasl_mechanism} as {self.sasl_username})"

    def ssl_context(self) -> ssl.SSLContext:
        """A client TLS context from the files (read now: a certificate rotated on disk is
        used by the next client made); ``InvalidConfigError`` naming a file that cannot be
        read or is not what it should be."""
        try:
            context = ssl.create_default_context(cafile=self.ssl_cafile)
        except (OSError, ssl.SSLError) as exc:
            raise InvalidConfigError(f"ssl.ca.location {self.ssl_cafile}: {_reason(exc)}") from None
        if self.ssl_certfile is not None:
            try:
                context.load_cert_chain(
                    self.ssl_certfile, self.ssl_keyfile, password=self.ssl_key_password
                )
            except (OSError, ssl.SSLError) as exc:
                files = ", ".join(f for f in (self.ssl_certfile, self.ssl_keyfile) if f)
                raise InvalidConfigError(
                    f"ssl.certificate.location/ssl.key.location {files}: {_reason(exc)}"
                ) from None
        context.check_hostname = self.ssl_check_hostname
        return context

    def aiokafka_options(self) -> dict[str, Any]:
        """aiokafka's keyword arguments for these settings (an ``ssl_context`` made now)."""
        options: dict[str, Any] = {"security_protocol": self.protocol}
        if self.uses_sasl:
            options.update(
                sasl_mechanism=self.sasl_mechanism,
                sasl_plain_username=self.sasl_username,
                sasl_plain_password=self.sasl_password,
            )
        if self.uses_tls:
            options["ssl_context"] = self.ssl_context()
        return options

    def java_properties(self) -> dict[str, str]:
        """The same settings for a Java Kafka tool's ``--command-config`` (PEM trust and key
        stores, a JAAS login of the mechanism); ``InvalidConfigError`` for what a Java
        client cannot take from these files (a client certificate: it wants the key and the
        chain in one PEM keystore)."""
        props = {"security.protocol": self.protocol}
        if self.uses_sasl:
            module = (
                "org.apache.kafka.common.security.plain.PlainLoginModule"
                if self.sasl_mechanism == "PLAIN"
                else "org.apache.kafka.common.security.scram.ScramLoginModule"
            )
            props["sasl.mechanism"] = str(self.sasl_mechanism)
            props["sasl.jaas.config"] = (
                f"{module} required username={_jaas(self.sasl_username)} "
                f"password={_jaas(self.sasl_password)};"
            )
        if self.uses_tls:
            if self.ssl_cafile is not None:
                props["ssl.truststore.type"] = "PEM"
                props["ssl.truststore.location"] = self.ssl_cafile
            if self.ssl_certfile is not None:
                raise InvalidConfigError(
                    "Kafka's Java tools need a client certificate as one PEM keystore; "
                    "ssl.certificate.location is not passed to them"
                )
            if not self.ssl_check_hostname:
                props["ssl.endpoint.identification.algorithm"] = ""
        return props

    @classmethod
    def from_properties(cls, props: Mapping[str, str], source: str = "") -> KafkaSecurity:
        """Settings from properties named as librdkafka names them (``PROPERTY_KEYS``);
        ``InvalidConfigError`` for a key that is not one of those (a typo would otherwise
        go unnoticed) or a value out of its range. ``source`` names where they came from,
        in errors."""
        where = f" ({source})" if source else ""
        fields: dict[str, Any] = {}
        for raw_key, value in props.items():
            key = _ALIASES.get(raw_key, raw_key)
            name = PROPERTY_KEYS.get(key)
            if name is None:
                raise InvalidConfigError(
                    f"unknown Kafka setting {raw_key[:80]!r}{where}: the settings are "
                    f"{', '.join(PROPERTY_KEYS)}"
                )
            if name == "ssl_check_hostname":
                algorithm = value.strip().lower()
                if algorithm not in ("https", "none", ""):
                    raise InvalidConfigError(
                        f"ssl.endpoint.identification.algorithm must be https or none, got "
                        f"{value[:40]!r}{where}"
                    )
                fields[name] = algorithm == "https"
            elif name in ("protocol", "sasl_mechanism"):
                fields[name] = value.strip().upper()
            else:
                fields[name] = value
        try:
            return cls(**fields)
        except InvalidConfigError as exc:
            raise InvalidConfigError(f"{exc}{where}") from None


def read_properties(path: Path) -> dict[str, str]:
    """The ``key=value`` lines of a properties file (blank lines and lines starting with
    ``#`` or ``!`` skipped; spaces around key and value dropped); ``InvalidConfigError`` for
    a file that cannot be read, is larger than 64 KiB, or has a line that is not
    ``key=value``, or a key twice. Errors never quote a value (it may be a password)."""
    try:
        with path.open("rb") as f:
            raw = f.read(MAX_PROPERTIES_BYTES + 1)
    except OSError as exc:
        raise InvalidConfigError(f"cannot read the Kafka config {path}: {_reason(exc)}") from None
    if len(raw) > MAX_PROPERTIES_BYTES:
        raise InvalidConfigError(f"the Kafka config {path} is larger than 64 KiB")
    try:
        text = raw.decode()
    except UnicodeDecodeError:
        raise InvalidConfigError(f"the Kafka config {path} is not UTF-8 text") from None
    props: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        if not stripped or stripped[0] in "#!":
            continue
        key, sep, value = stripped.partition("=")
        key = key.strip()
        if not sep or not key:
            raise InvalidConfigError(f"{path}:{number}: not a key=value line")
        if key in props:
            raise InvalidConfigError(f"{path}:{number}: {key[:80]} is set twice")
        props[key] = value.strip()
    return props


def _refuse_unused(settings: Mapping[str, str | None], protocol: str, needs: str) -> None:
    given = [name for name, value in settings.items() if value is not None]
    if given:
        raise InvalidConfigError(
            f"{', '.join(given)} set but security.protocol is {protocol}, which would not use "
            f"{'it' if len(given) == 1 else 'them'}: set security.protocol to {needs}"
        )


def _jaas(value: str | None) -> str:
    """A JAAS option value, quoted (a quote or backslash in it escaped)."""
    text = str(value).replace("\\", "\\\\").replace('"', '\\"')
    return f'"{text}"'


def _reason(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__


#: Neither TLS nor SASL: the default, and what the clusters ``lukhas up`` starts speak.
PLAINTEXT = KafkaSecurity()
