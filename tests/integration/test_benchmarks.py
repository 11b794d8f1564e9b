"""Every benchmark of ``make bench`` runs to its end at small sizes, against this test's
broker, and writes its figures (to the test's own directory, not ``benchmarks/results``).

This checks that the scripts work (arguments, the worker they start, the tables they print,
the JSON they write), not what they measure: speed is never asserted in a test. The peers'
benchmark (``peers.py``) needs the ``[bench]`` extra, which the test environment leaves out,
and ``failover.py`` the docker compose cluster.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"

#: Each script with sizes that take seconds here, and the file it writes.
SMALL: dict[str, tuple[str, ...]] = {
    "materialize": ("--events", "20000", "--contexts", "100", "--partitions", "2",
                    "--runs", "1", "--patch-events", "4000", "--timeout", "120"),
    "restore": ("--contexts", "5000", "--tail", "1000", "--expiring", "500", "--steady", "300",
                "--spread-ms", "2000", "--ttl-ms", "1000", "--load-rate", "100",
                "--timeout", "120", "--overall-timeout", "240"),
    "changes": ("--events", "4000", "--contexts", "200", "--partitions", "2", "--runs", "1",
                "--delta-events", "1000", "--latency-writes", "40", "--rate", "40",
                "--writers", "2", "--warmup", "4", "--idle-latency", "2", "--timeout", "120"),
    "verify": ("--contexts", "5000"),
    "history": ("--records", "20000", "--contexts", "500", "--hot", "500"),
    "locks": ("--rounds", "40", "--contenders", "2"),
    "fences": ("--records", "5000", "--contexts", "200", "--locks", "10"),
    "transactions": ("--rounds", "10", "--events", "3"),
    "failover_local": ("--contexts", "4000", "--partitions", "2", "--rate", "40",
                       "--timeout", "120"),
    "memory": ("--events", "20000", "--many-events", "40000", "--contexts", "100",
               "--many-contexts", "20000", "--budget", "256MiB", "--partitions", "2",
               "--check-reads", "50", "--timeout", "300"),
    "reads": ("--contexts", "2000", "--hot", "100", "--reads", "400", "--partitions", "2"),
    "ttl_touch": ("--contexts", "1000", "--hot", "100", "--reads", "2000", "--rounds", "2",
                  "--partitions", "2"),
    "guards": ("--ops", "2000", "--reads", "100", "--rounds", "1", "--calls", "6",
               "--stop-s", "3"),
}  # fmt: skip


def test_every_script_of_make_bench_is_smoke_tested() -> None:
    makefile = (BENCHMARKS.parent / "Makefile").read_text()
    scripts = {line.split("benchmarks/")[1].split(".py")[0]
               for line in makefile.splitlines() if "python benchmarks/" in line}  # fmt: skip
    # peers.py needs the [bench] extra; failover.py the docker compose cluster (make
    # bench-compose), which these tests do not start.
    assert scripts - {"peers", "failover"} == set(SMALL)


@pytest.mark.parametrize("script", sorted(SMALL))
def test_benchmark_runs_at_small_sizes(script: str, cluster, tmp_path: Path) -> None:
    env = {**os.environ, "LUKHAS_BOOTSTRAP": cluster.bootstrap,
           "LUKHAS_BENCH_RESULTS": str(tmp_path)}  # fmt: skip
    run = subprocess.run(
        [sys.executable, str(BENCHMARKS / f"{script}.py"), *SMALL[script]],
        capture_output=True, text=True, env=env, timeout=600, check=False,
    )  # fmt: skip
    assert run.returncode == 0, (run.stdout[-3000:], run.stderr[-3000:])
    result = json.loads((tmp_path / f"{script}.json").read_text())
    assert result, "an empty result"
    assert run.stdout.strip(), "no table printed"
    assert "Traceback" not in run.stderr
