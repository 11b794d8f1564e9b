"""Find or fetch an Apache Kafka distribution to run brokers from.

Three sources, in this order: an existing install (``KAFKA_HOME``, passed in by the caller), a
cache directory filled by an earlier fetch, or a fresh fetch of the jars from Maven Central.
The environment is read by the caller only (STYLE.md, "Configuration").

Kafka's command-line tools (``kafka-tools``: ``TransactionsCommand`` behind
``lukhas transactions``) are not needed to run a broker; ``ensure_kafka_tools`` fetches that
one jar on first use into ``<cache>/tools`` (its dependencies are the broker's jars), so a
cache that running brokers use is never rewritten for it.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from lukhas_context.ops.exceptions import JavaNotFoundError, KafkaFetchError, KafkaHomeError

DEFAULT_VERSION = "4.0.2"
LOG4J_BOM_VERSION = "2.24.3"
COMPLETE_MARKER = ".complete"
TOOLS_DIR = "tools"
MAVEN_TAIL_LINES = 30

_POM = """<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>lukhas</groupId><artifactId>kafka-dist</artifactId><version>1</version>
  <packaging>pom</packaging>
  <dependencyManagement><dependencies>
    <dependency><groupId>org.apache.logging.log4j</groupId><artifactId>log4j-bom</artifactId>
      <version>{log4j}</version><type>pom</type><scope>import</scope></dependency>
  </dependencies></dependencyManagement>
  <dependencies>
    <dependency><groupId>org.apache.kafka</groupId><artifactId>kafka_2.13</artifactId>
      <version>{kafka}</version></dependency>
    <dependency><groupId>org.apache.logging.log4j</groupId><artifactId>log4j-core</artifactId>
    </dependency>
    <dependency><groupId>org.apache.logging.log4j</groupId>
      <artifactId>log4j-slf4j-impl</artifactId></dependency>
  </dependencies>
</project>
"""

_TOOLS_POM = """<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>lukhas</groupId><artifactId>kafka-tools</artifactId><version>1</version>
  <packaging>pom</packaging>
  <dependencies>
    <dependency><groupId>org.apache.kafka</groupId><artifactId>kafka-tools</artifactId>
      <version>{kafka}</version></dependency>
  </dependencies>
</project>
"""

# Root at WARN: Kafka logs hundreds of INFO lines per startup. The one INFO line kept says
# "Kafka Server started", which is what a human reading kafka.log looks for first.
_LOG4J2 = """status = warn
appender.console.type = Console
appender.console.name = STDOUT
appender.console.layout.type = PatternLayout
appender.console.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = warn
rootLogger.appenderRef.stdout.ref = STDOUT
logger.kafka.name = kafka
logger.kafka.level = warn
logger.apache.name = org.apache.kafka
logger.apache.level = warn
logger.started.name = kafka.server.KafkaRaftServer
logger.started.level = info
"""


@dataclass(frozen=True, slots=True)
class KafkaDist:
    """How to run Kafka's JVM classes: ``[java, "-cp", classpath, main_class, ...]``.

    ``source`` is ``"kafka_home"``, ``"cache"`` (reused jars) or ``"maven"`` (fetched now).
    """

    classpath: str
    java: str
    source: str


def default_cache_dir(version: str = DEFAULT_VERSION) -> Path:
    """``~/.cache/lukhas/kafka-<version>``, where fetched jars are kept between runs."""
    return Path.home() / ".cache" / "lukhas" / f"kafka-{version}"


def ensure_kafka(
    version: str = DEFAULT_VERSION,
    cache_dir: Path | None = None,
    kafka_home: str | None = None,
) -> KafkaDist:
    """Return a runnable Kafka distribution, fetching it with Maven only when needed.

    ``kafka_home`` wins when given (``version`` is then not checked). Otherwise ``cache_dir``
    (default :func:`default_cache_dir`) is reused when it holds ``libs/kafka_2.13-<version>.jar``
    and the ``.complete`` marker; else the jars are fetched into it (about 20 s) and the marker
    is written last, so an interrupted fetch is redone rather than trusted.

    Raises ``JavaNotFoundError``, ``KafkaHomeError`` (no jars under ``kafka_home``) or
    ``KafkaFetchError`` (Maven missing or failed; the message has Maven's last lines).
    """
    java = _find_java()
    if kafka_home is not None:
        return KafkaDist(_kafka_home_classpath(Path(kafka_home)), java, "kafka_home")
    cache = cache_dir if cache_dir is not None else default_cache_dir(version)
    libs = cache / "libs"
    if _is_complete(cache, version):
        return KafkaDist(f"{libs}/*", java, "cache")
    _maven_fetch(cache, version)
    return KafkaDist(f"{libs}/*", java, "maven")


def ensure_kafka_tools(
    version: str = DEFAULT_VERSION,
    cache_dir: Path | None = None,
    kafka_home: str | None = None,
) -> KafkaDist:
    """A distribution whose classpath also holds ``kafka-tools`` (``org.apache.kafka.tools``).

    ``kafka_home`` must have ``libs/kafka-tools-*.jar`` (every Apache Kafka download has).
    Otherwise the broker jars come from :func:`ensure_kafka` and ``kafka-tools-<version>.jar``
    alone is fetched into ``<cache>/tools`` (a few seconds, once), marked complete last.
    """
    dist = ensure_kafka(version, cache_dir, kafka_home)
    if kafka_home is not None:
        if not any((Path(kafka_home) / "libs").glob("kafka-tools-*.jar")):
            raise KafkaHomeError(f"KAFKA_HOME={kafka_home} has no libs/kafka-tools-*.jar")
        return dist
    tools = (cache_dir if cache_dir is not None else default_cache_dir(version)) / TOOLS_DIR
    jar = tools / f"kafka-tools-{version}.jar"
    if not (jar.is_file() and (tools / COMPLETE_MARKER).is_file()):
        _maven_fetch_tools(tools, version)
    return KafkaDist(f"{jar}:{dist.classpath}", dist.java, dist.source)


def log4j_config(path: Path) -> Path:
    """Write a log4j2 properties file (console, WARN) at ``path`` and return ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(_LOG4J2)
    return path


def _find_java() -> str:
    java = shutil.which("java")
    if java is None:
        raise JavaNotFoundError(
            "no `java` on PATH: install a JRE 17+ (apt-get install default-jre)"
        )
    return java


def _kafka_home_classpath(home: Path) -> str:
    libs = home / "libs"
    if not any(libs.glob("kafka_*.jar")):
        raise KafkaHomeError(f"KAFKA_HOME={home} has no libs/kafka_*.jar")
    return f"{libs}/*"


def _is_complete(cache: Path, version: str) -> bool:
    jar = cache / "libs" / f"kafka_2.13-{version}.jar"
    return jar.is_file() and (cache / COMPLETE_MARKER).is_file()


def _maven_fetch(cache: Path, version: str) -> None:
    mvn = shutil.which("mvn")
    if mvn is None:
        raise KafkaFetchError("no `mvn` on PATH: install maven or set KAFKA_HOME")
    libs = cache / "libs"
    # Jars left by an interrupted or older fetch could shadow the ones we need on the classpath.
    shutil.rmtree(libs, ignore_errors=True)
    cache.mkdir(parents=True, exist_ok=True)
    pom = cache / "pom.xml"
    pom.write_text(_POM.format(kafka=version, log4j=LOG4J_BOM_VERSION))
    argv = [
        mvn, "-q", "-B", "-f", str(pom), "dependency:copy-dependencies",
        f"-DoutputDirectory={libs}", "-DincludeScope=runtime",
    ]  # fmt: skip
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    if done.returncode != 0 or not _has_jar(libs, version):
        raise KafkaFetchError(_maven_failure(done, version))
    (cache / COMPLETE_MARKER).write_text(version + "\n")


def _maven_fetch_tools(tools: Path, version: str) -> None:
    mvn = shutil.which("mvn")
    if mvn is None:
        raise KafkaFetchError("no `mvn` on PATH: install maven or set KAFKA_HOME")
    shutil.rmtree(tools, ignore_errors=True)
    tools.mkdir(parents=True)
    pom = tools / "pom.xml"
    pom.write_text(_TOOLS_POM.format(kafka=version))
    argv = [
        mvn, "-q", "-B", "-f", str(pom), "dependency:copy-dependencies",
        f"-DoutputDirectory={tools}", "-DincludeScope=runtime", "-DexcludeTransitive=true",
    ]  # fmt: skip
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    if done.returncode != 0 or not (tools / f"kafka-tools-{version}.jar").is_file():
        raise KafkaFetchError(_maven_failure(done, version).replace("kafka_2.13", "kafka-tools"))
    (tools / COMPLETE_MARKER).write_text(version + "\n")


def _has_jar(libs: Path, version: str) -> bool:
    return (libs / f"kafka_2.13-{version}.jar").is_file()


def _maven_failure(done: subprocess.CompletedProcess[str], version: str) -> str:
    lines = (done.stdout + done.stderr).splitlines()[-MAVEN_TAIL_LINES:]
    tail = "\n".join(lines) or "(no output)"
    return f"mvn exit {done.returncode} fetching org.apache.kafka:kafka_2.13:{version}:\n{tail}"
