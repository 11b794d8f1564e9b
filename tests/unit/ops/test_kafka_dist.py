"""Where ``ensure_kafka`` takes Kafka from: KAFKA_HOME, a complete cache, or a Maven fetch.

Maven is replaced by a fake ``mvn`` script first on PATH, which records that it ran.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from lukhas_context.ops.exceptions import KafkaFetchError, KafkaHomeError
from lukhas_context.ops.kafka_dist import (
    COMPLETE_MARKER,
    ensure_kafka,
    ensure_kafka_tools,
    log4j_config,
)

VERSION = "4.0.2"

_FAKE_MVN = """#!/bin/sh
echo "$@" >> "{calls}"
[ "{fail}" = "1" ] && {{ echo "[ERROR] Could not resolve dependencies"; exit 1; }}
for arg in "$@"; do
  case "$arg" in -DoutputDirectory=*) out="${{arg#-DoutputDirectory=}}";; esac
done
mkdir -p "$out" && touch "$out/kafka_2.13-{version}.jar" "$out/kafka-clients-{version}.jar"
touch "$out/kafka-tools-{version}.jar"
"""


@pytest.fixture
def fake_mvn(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Put a fake ``mvn`` first on PATH; returns the file where it appends its arguments."""
    return _install_fake_mvn(tmp_path, monkeypatch, fail=False)


def _install_fake_mvn(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fail: bool) -> Path:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    calls = tmp_path / "mvn-calls"
    script = bin_dir / "mvn"
    script.write_text(_FAKE_MVN.format(calls=calls, fail=int(fail), version=VERSION))
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    return calls


def _fake_cache(cache: Path, complete: bool) -> None:
    (cache / "libs").mkdir(parents=True)
    (cache / "libs" / f"kafka_2.13-{VERSION}.jar").touch()
    if complete:
        (cache / COMPLETE_MARKER).write_text(VERSION)


def test_complete_cache_is_reused_without_maven(tmp_path: Path, fake_mvn: Path) -> None:
    cache = tmp_path / "cache"
    _fake_cache(cache, complete=True)
    dist = ensure_kafka(VERSION, cache_dir=cache)
    assert dist.source == "cache"
    assert dist.classpath == f"{cache}/libs/*"
    assert Path(dist.java).name == "java"
    assert not fake_mvn.exists()


def test_cache_without_marker_is_fetched_again(tmp_path: Path, fake_mvn: Path) -> None:
    cache = tmp_path / "cache"
    _fake_cache(cache, complete=False)
    (cache / "libs" / "stale-1.0.jar").touch()
    dist = ensure_kafka(VERSION, cache_dir=cache)
    assert dist.source == "maven"
    assert (cache / COMPLETE_MARKER).exists()
    assert not (cache / "libs" / "stale-1.0.jar").exists()
    args = fake_mvn.read_text()
    assert "dependency:copy-dependencies" in args and "-DincludeScope=runtime" in args
    pom = (cache / "pom.xml").read_text()
    assert f"<artifactId>kafka_2.13</artifactId>\n      <version>{VERSION}</version>" in pom
    assert "log4j-bom" in pom and "<scope>import</scope>" in pom
    assert ensure_kafka(VERSION, cache_dir=cache).source == "cache"


def test_maven_failure_is_typed_and_leaves_no_marker(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _install_fake_mvn(tmp_path, monkeypatch, fail=True)
    cache = tmp_path / "cache"
    with pytest.raises(KafkaFetchError, match="Could not resolve dependencies") as caught:
        ensure_kafka(VERSION, cache_dir=cache)
    assert caught.value.retriable
    assert not (cache / COMPLETE_MARKER).exists()


def test_kafka_home_is_used_as_is(tmp_path: Path, fake_mvn: Path) -> None:
    home = tmp_path / "kafka_2.13-4.0.0"
    (home / "libs").mkdir(parents=True)
    (home / "libs" / "kafka_2.13-4.0.0.jar").touch()
    dist = ensure_kafka(VERSION, cache_dir=tmp_path / "unused", kafka_home=str(home))
    assert dist.source == "kafka_home"
    assert dist.classpath == f"{home}/libs/*"
    assert not fake_mvn.exists()
    assert not (tmp_path / "unused").exists()


def test_kafka_home_without_jars_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(KafkaHomeError, match="libs/kafka_"):
        ensure_kafka(VERSION, kafka_home=str(tmp_path))


def test_log4j_config_quiets_kafka(tmp_path: Path) -> None:
    path = log4j_config(tmp_path / "conf" / "log4j2.properties")
    text = path.read_text()
    assert "rootLogger.level = warn" in text
    assert "logger.kafka.level = warn" in text


def test_the_tools_jar_is_fetched_once_beside_the_broker_jars(
    tmp_path: Path, fake_mvn: Path
) -> None:
    cache = tmp_path / "cache"
    _fake_cache(cache, complete=True)
    dist = ensure_kafka_tools(VERSION, cache_dir=cache)
    assert dist.classpath == f"{cache}/tools/kafka-tools-{VERSION}.jar:{cache}/libs/*"
    assert "-DexcludeTransitive=true" in fake_mvn.read_text()
    assert (cache / "libs" / f"kafka_2.13-{VERSION}.jar").exists()  # the broker's cache untouched
    ensure_kafka_tools(VERSION, cache_dir=cache)
    assert len(fake_mvn.read_text().splitlines()) == 1  # reused, not fetched again


def test_kafka_home_without_the_tools_jar_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "libs").mkdir()
    (tmp_path / "libs" / f"kafka_2.13-{VERSION}.jar").touch()
    with pytest.raises(KafkaHomeError, match="kafka-tools"):
        ensure_kafka_tools(VERSION, kafka_home=str(tmp_path))
