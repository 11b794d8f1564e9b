"""A Schema Registry for the tests: Apicurio Registry 2.4.2.Final (Apache-2.0), whose
Confluent-compatible API (``/apis/ccompat/v7``) is what Confluent's own clients talk to.

No registry runs from PyPI here (Karapace is not published there) and Apicurio ships no runnable
jar on Maven Central, so it is built once from Central's jars (``apicurio/``: a wrapper
application that the Quarkus Maven plugin turns into ``quarkus-app/quarkus-run.jar``) into
``~/.cache/lukhas/apicurio-2.4.2`` with a Maven repository of its own (``m2``), so nothing of it
lands in ``~/.m2``. The one artifact Central lacks, the build half of Apicurio's config-index
extension, is ``apicurio/deployment`` (written for this project). A build takes about a minute
and 200 MB of downloads, once; the registry then starts in a few seconds with in-memory storage.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import shutil
import subprocess
import time
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .conftest import stop_process

HERE = Path(__file__).parent / "apicurio"
VERSION = "2.4.2.Final"
APP_PROPERTIES = "application.properties"
COMPLETE = ".complete"
#: What the wrapper application adds to the registry jar's own build configuration: the
#: registry's classes are a dependency here, so Quarkus must be told to index them.
EXTRA_PROPERTIES = """
quarkus.index-dependency.registry-app.group-id=io.apicurio
quarkus.index-dependency.registry-app.artifact-id=apicurio-registry-app
"""


def cache_dir() -> Path:
    return Path.home() / ".cache" / "lukhas" / "apicurio-2.4.2"


def _mvn(cache: Path, pom: Path, *goals: str) -> None:
    mvn = shutil.which("mvn")
    assert mvn is not None, "no `mvn` on PATH (.ci/run installs maven)"
    argv = [mvn, "-B", "-q", "-s", str(HERE / "settings.xml"),
            f"-Dmaven.repo.local={cache / 'm2'}", "-f", str(pom), *goals]  # fmt: skip
    done = subprocess.run(argv, capture_output=True, text=True, timeout=1200, check=False)
    if done.returncode != 0:
        tail = "\n".join((done.stdout + done.stderr).splitlines()[-40:])
        raise AssertionError(f"building the Schema Registry failed ({' '.join(goals)}):\n{tail}")


def _sources_digest() -> str:
    """What the build is made from (``apicurio/``): a cache built from other files is rebuilt."""
    digest = hashlib.sha256(VERSION.encode())
    for path in sorted(p for p in HERE.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(HERE)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def ensure_registry() -> Path:
    """``quarkus-run.jar`` of the built registry (built now unless the cache has it, built
    from the same files). One build at a time: a lock file in the cache serialises callers."""
    cache = cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    with (cache / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        return _ensure_registry(cache)


def _ensure_registry(cache: Path) -> Path:
    jar = cache / "quarkus-app" / "quarkus-run.jar"
    marker = cache / COMPLETE
    sources = _sources_digest()
    if jar.is_file() and marker.is_file() and marker.read_text().strip() == sources:
        return jar
    build = cache / "build"
    shutil.rmtree(build, ignore_errors=True)
    shutil.copytree(HERE, build)
    _mvn(cache, build / "deployment" / "pom.xml", "install")
    _mvn(cache, build / "app" / "pom.xml", "dependency:resolve")
    app_jar = cache / "m2" / "io" / "apicurio" / "apicurio-registry-app" / VERSION
    with zipfile.ZipFile(app_jar / f"apicurio-registry-app-{VERSION}.jar") as z:
        own = z.read(APP_PROPERTIES).decode()
    resources = build / "app" / "src" / "main" / "resources"
    resources.mkdir(parents=True, exist_ok=True)
    (resources / APP_PROPERTIES).write_text(own + EXTRA_PROPERTIES)
    # The registry's own properties say legacy-jar for %prod: a fast-jar starts sooner.
    _mvn(cache, build / "app" / "pom.xml", "package", "-DskipTests",
         "-Dquarkus.package.type=fast-jar")  # fmt: skip
    shutil.rmtree(cache / "quarkus-app", ignore_errors=True)
    shutil.copytree(build / "app" / "target" / "quarkus-app", cache / "quarkus-app")
    marker.write_text(sources + "\n")
    return jar


@dataclass
class Registry:
    """One running registry on 127.0.0.1:``port`` (in-memory: empty at every start)."""

    root: Path
    port: int
    proc: subprocess.Popen[bytes] | None = None
    log: Any = None

    @property
    def url(self) -> str:
        """The Confluent-compatible API, as ``schema.registry.url`` of Confluent's clients."""
        return f"http://127.0.0.1:{self.port}/apis/ccompat/v7"

    def start(self, timeout_s: float = 120.0) -> None:
        jar = ensure_registry()
        java = shutil.which("java")
        assert java is not None
        self.root.mkdir(parents=True, exist_ok=True)
        self.log = log = (self.root / "registry.log").open("ab")
        self.proc = subprocess.Popen(
            [java, "-Xmx256m", "-Dquarkus.http.host=127.0.0.1",
             f"-Dquarkus.http.port={self.port}", "-jar", str(jar)],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True, cwd=self.root,
        )  # fmt: skip
        deadline = time.monotonic() + timeout_s
        while not self._answers():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                tail = (self.root / "registry.log").read_text(errors="replace")[-4000:]
                self.stop()
                raise AssertionError(f"the Schema Registry did not start:\n{tail}")
            time.sleep(0.3)

    def _answers(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/subjects", timeout=2) as r:
                return bool(r.status == 200 and isinstance(json.load(r), list))
        except (OSError, urllib.error.URLError, ValueError):
            return False

    def stop(self) -> None:
        stop_process(self.proc)
        if self.log is not None:
            self.log.close()
            self.log = None
