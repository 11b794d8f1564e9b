"""The `lukhas` command as a new user meets it, with nothing running: every bad number or
position is a one-line usage error (exit 2) before anything connects, and every command with
Kafka or the read API down prints one line and exits 1 — never a traceback, never a wait
without end. Commands run as child processes, exactly as a user runs them."""

from __future__ import annotations

import importlib.metadata
import json
import logging
import os
import socket
import subprocess
import sys
import tomllib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import click
import pytest
from click.testing import CliRunner

from lukhas_context.ops.cli import cli, params

HUGE = "9" * 23
PYPROJECT = Path(__file__).resolve().parents[3] / "pyproject.toml"


@pytest.fixture(autouse=True)
def _kafka_log_level() -> Iterator[None]:
    """The command quiets the Kafka client's logger; in this process, only for the test."""
    logger = logging.getLogger("aiokafka")
    level = logger.level
    yield
    logger.setLevel(level)


def _dead_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture
def lukhas(tmp_path: Path) -> Callable[..., subprocess.CompletedProcess[str]]:
    """Runs `lukhas` in an empty directory with an empty data dir and no environment."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("LUKHAS_")}
    env["LUKHAS_DATA_DIR"] = str(tmp_path / "empty")

    def run(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "lukhas_context.ops", *args], input=stdin, env=env,
            cwd=tmp_path, capture_output=True, text=True, timeout=120,
        )  # fmt: skip

    return run


def _one_line(done: subprocess.CompletedProcess[str], code: int, prefix: str) -> str:
    lines = done.stderr.strip().splitlines()
    assert done.returncode == code, (done.returncode, done.stderr)
    assert len(lines) == 1 and lines[0].startswith(prefix), done.stderr
    return lines[0]


# ---- bad numbers and positions: usage errors before anything connects ----

BAD_OPTIONS = [
    ("get", "x", "--timeout", "nan"),
    ("get", "x", "--timeout", "inf"),
    ("get", "x", "--timeout", "1e400"),
    ("get", "x", "--timeout", "-1"),
    ("get", "x", "--after", f"0:{HUGE}"),
    ("get", "x", "--after", "٣:0"),
    ("get", "x", "--after", "0"),
    ("outcome", f"0:{HUGE}"),
    ("outcome", f"{HUGE}:0"),
    ("outcome", "0:1_0"),
    ("outcome", "0:5", "--timeout", "nan"),
    ("watch", "--from", HUGE),
    ("watch", "--idle-timeout", "nan"),
    ("watch", "--limit", HUGE),
    ("put", "x", "{}", "--ttl", "nan"),
    ("put", "x", "{}", "--ttl", "inf"),
    ("put", "x", "{}", "--if-version", HUGE),
    ("put", "x", "{}", "--wait", "--timeout", "inf"),
    ("put", "x", "{}", "--metadata", "no-equals"),
    ("put", "x", "{}", "--metadata", "a=1", "--metadata", "a=2"),
    ("put", "x", "{}", "--metadata", "bad key=1", "--bootstrap", "127.0.0.1:1"),
    ("delete", "x", "--metadata", "k=" + "v" * 2000, "--bootstrap", "127.0.0.1:1"),
    ("patch", "x", "[]", "--ttl", "1e400"),
    ("touch", "x", "--ttl", "-inf"),
    ("delete", "x", "--if-version", "-1"),
    ("checkpoint", "--timeout", "nan"),
    ("restore", "-p", HUGE),
    ("up", "--api-port", "70000"),
    ("up", "--redis-port", HUGE),
    ("worker", "--bootstrap", "b:1", "--state-dir", "s", "--session-timeout", "nan"),
    ("worker", "--bootstrap", "b:1", "--state-dir", "s", "--rebalance-timeout", "0"),
    ("worker", "--bootstrap", "b:1", "--state-dir", "s", "--rebalance-timeout", "inf"),
    ("worker", "--bootstrap", "b:1", "--state-dir", "s", "--memory-budget", "1MiB"),
    ("worker", "--bootstrap", "b:1", "--state-dir", "s", "--memory-budget", "12 parsecs"),
    ("worker", "--bootstrap", "b:1", "--state-dir", "s", "--memory-budget", "-1GiB"),
    ("worker", "--bootstrap", "b:1", "--state-dir", "s", "--checkpoint-interval", "inf"),
    ("worker", "--bootstrap", "b:1", "--state-dir", "s", "--expiry-interval", "nan"),
    ("worker", "--bootstrap", "b:1", "--state-dir", "s", "--api-port", HUGE),
    ("worker", "--bootstrap", "b:1", "--state-dir", "s", "--max-batch", HUGE),
    ("worker", "--bootstrap", "b:1", "--state-dir", "s", "--header-timeout", "nan"),
    ("worker", "--bootstrap", "b:1", "--state-dir", "s", "--body-timeout", "inf"),
    ("worker", "--bootstrap", "b:1", "--state-dir", "s", "--idle-timeout", "0"),
    ("worker", "--bootstrap", "b:1", "--state-dir", "s", "--max-connections", HUGE),
    ("worker", "--bootstrap", "b:1", "--state-dir", "s", "--advertised-url", "ftp://a"),
    ("worker", "--bootstrap", "b:1", "--state-dir", "s", "--peer-url", "http://u:p@w:1"),
    ("worker", "--bootstrap", "b:1", "--state-dir", "s", "--change-compression", "gzip"),
    ("transactions", "abort", "-p", HUGE, "--start-offset", "0"),
    ("transactions", "abort", "-p", "0", "--start-offset", HUGE),
    ("transactions", "open", "-p", HUGE),
]


@pytest.mark.parametrize("args", BAD_OPTIONS, ids=" ".join)
def test_an_out_of_range_number_is_a_one_line_usage_error(args: tuple[str, ...]) -> None:
    result = CliRunner().invoke(cli, list(args))
    assert result.exit_code == 2, (result.exit_code, result.output, result.exception)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("lukhas: usage error: "), result.stderr
    assert "Traceback" not in result.output


def test_usage_errors_name_the_option_and_the_range() -> None:
    result = CliRunner().invoke(cli, ["get", "x", "--timeout", "nan"])
    assert "'--timeout'" in result.stderr and "finite" in result.stderr
    result = CliRunner().invoke(cli, ["watch", "--from", HUGE])
    assert "'--from'" in result.stderr and "2^63-1" in result.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("put", "x", "@does-not-exist.json"), "cannot read DOCUMENT"),
        (("put", "x", "[1, 2]"), "JSON object"),
        (("put", "x", "{nope"), "does not parse"),
        (("patch", "x", "@does-not-exist.json"), "cannot read PATCH"),
        # Issue 9: a big integer would be rounded to a double; an invalid patch was appended.
        (("put", "x", '{"a": 123456789012345678901234567890}'), "outside the range"),
        (
            ("patch", "x", '[{"op": "add", "path": "/n", "value": -9223372036854775809}]'),
            "outside the range",
        ),
        (("patch", "x", '[{"op": "frob", "path": "/x"}]'), "InvalidPatchError: op 0: unknown op"),
        (("patch", "x", '[{"op": "add", "path": "x", "value": 1}]'), "is not a JSON pointer"),
        (("patch", "x", '{"a": ' * 65 + "1" + "}" * 65, "--merge"), "deeper than 64 levels"),
    ],
)
def test_json_arguments_are_checked_before_anything_connects(
    args: tuple[str, ...], message: str
) -> None:
    result = CliRunner().invoke(cli, list(args))
    assert result.exit_code == 2 and message in result.stderr, result.stderr


def test_help_documents_exit_codes_and_big_documents() -> None:
    for command in ([], ["put"], ["patch"], ["outcome"]):
        text = " ".join(CliRunner().invoke(cli, [*command, "--help"]).output.split())
        assert "4 conflict" in text and "5 rejected" in text and "6 dead-lettered" in text
    for command in ("put", "patch"):
        text = CliRunner().invoke(cli, [command, "--help"]).output
        assert "`-`" in text and "@FILE" in text and "--no-wait" in text


def test_version_is_the_distributions(lukhas: Callable[..., Any]) -> None:
    """`lukhas --version` prints the installed distribution's version, the one pyproject
    declares, and exits 0 (in process and as a user runs it)."""
    project = tomllib.loads(PYPROJECT.read_text())["project"]
    version = importlib.metadata.version(project["name"])
    assert version == project["version"]
    result = CliRunner().invoke(cli, ["--version"])
    assert (result.exit_code, result.stdout) == (0, f"lukhas {version}\n")
    done = lukhas("--version")
    assert (done.returncode, done.stdout, done.stderr) == (0, f"lukhas {version}\n", "")


# ---- nothing running: one line, exit 1 ----


def test_status_of_a_data_dir_without_a_cluster_says_so(lukhas: Callable[..., Any]) -> None:
    for args in (("status",), ("status", "--json"), ("down",)):
        done = lukhas(*args)
        line = _one_line(done, 1, "lukhas: error: no cluster in ")
        assert "empty" in line and done.stdout == ""


def test_reads_need_only_the_api_and_a_refused_one_fails_at_once(
    lukhas: Callable[..., Any],
) -> None:
    api = f"http://127.0.0.1:{_dead_port()}"
    # --timeout 60: without the fail-fast, this would retry for 65 s; the test's deadline
    # (the subprocess timeout) is 120 s, so a regression shows as the wrong line, not a hang.
    for args in (("get", "x", "--timeout", "60"), ("outcome", "0:1", "--timeout", "60")):
        done = lukhas(*args, "--api", api)
        line = _one_line(done, 1, "lukhas: error: ")
        assert f"cannot connect to the read API at {api}: connection refused" in line
        assert "ClientConnectorError" not in line and "Kafka" not in line


@pytest.mark.parametrize(
    "args",
    [
        ("put", "x", "{}"),
        ("put", "x", "{}", "--if-version", "0"),
        ("patch", "x", "[]", "--dry-run"),
        ("touch", "x"),
        ("delete", "x"),
        ("get", "x"),
        ("outcome", "0:0"),
        ("demo",),
        ("demo", "--json"),
        ("checkpoint",),
        ("watch",),
        ("restore", "-p", "0", "--state-dir", "state", "--no-progress"),
    ],
    ids=" ".join,
)
def test_with_kafka_and_the_api_down_every_command_prints_one_line(
    lukhas: Callable[..., Any], args: tuple[str, ...]
) -> None:
    dead = _dead_port()
    api = () if args[0] in ("watch", "restore") else ("--api", f"http://127.0.0.1:{dead}")
    done = lukhas(*args, "--bootstrap", f"127.0.0.1:{dead}", *api)
    _one_line(done, 1, "lukhas: error: ")
    assert "Traceback" not in done.stderr and done.stdout == ""


def test_without_any_cluster_reads_and_writes_say_what_is_missing(
    lukhas: Callable[..., Any],
) -> None:
    line = _one_line(lukhas("get", "x"), 1, "lukhas: error: no read API")
    assert "no cluster in" in line
    _one_line(lukhas("put", "x", "{}"), 1, "lukhas: error: no Kafka")
    # A condition waits for the outcome: the missing API is reported before anything is sent.
    done = lukhas("put", "x", "{}", "--if-version", "0", "--bootstrap", "127.0.0.1:1")
    _one_line(done, 1, "lukhas: error: no read API")


def test_positions_are_ascii_digits_bounded_by_value_not_by_length() -> None:
    position = params.Position()
    assert position.convert(f"0:{'0' * 30}7", None, None) == (0, 7)
    for bad in ("0:-1", "0: 1", "0:1_0", "٣:0", f"0:{2**63}", f"{2**31}:0", "0:", ":0"):
        with pytest.raises(click.BadParameter):
            position.convert(bad, None, None)


# ---- a cluster found by bootstrap (docker compose): topics create, status ----


def test_topics_create_needs_a_kafka_and_checks_its_numbers() -> None:
    result = CliRunner(env={"LUKHAS_BOOTSTRAP": ""}).invoke(cli, ["topics", "create"])
    assert result.exit_code == 1
    assert result.stderr.strip() == (
        "lukhas: error: no Kafka to create topics on: pass --bootstrap or set LUKHAS_BOOTSTRAP"
    )
    for bad in (["--partitions", "0"], ["--brokers", "0"], ["--timeout", "nan"]):
        result = CliRunner().invoke(cli, ["topics", "create", "--bootstrap", "b:1", *bad])
        assert result.exit_code == 2, (bad, result.output)


def test_topics_create_waits_for_the_brokers_it_was_told_of_then_says_so() -> None:
    result = CliRunner().invoke(
        cli, ["topics", "create", "--bootstrap", "127.0.0.1:1", "--brokers", "3", "--timeout", "1"]
    )
    assert result.exit_code == 1
    assert result.stderr.strip() == "lukhas: error: 0 of 3 brokers up at 127.0.0.1:1 after 1 s"


def test_status_of_a_cluster_given_by_bootstrap_reports_what_is_not_ready() -> None:
    args = ["status", "--bootstrap", "127.0.0.1:1", "--api", "http://127.0.0.1:1",
            "--redis-url", "redis://127.0.0.1:1/0", "--json"]  # fmt: skip
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 1
    report = json.loads(result.stdout)
    assert report["kafka"] == {"bootstrap": "127.0.0.1:1", "brokers": 0, "live": 0, "ready": False,
                               "why": "127.0.0.1:1 refuses connections"}  # fmt: skip
    assert report["redis"] == {"url": "redis://127.0.0.1:1/0", "ready": False}
    assert report["processors"] == [
        {"api": "http://127.0.0.1:1", "member": None, "alive": False, "ready": False}
    ]
    assert result.stderr.strip() == (
        "lukhas: error: not ready: kafka, redis, processor http://127.0.0.1:1"
    )


def _worker_config_of(
    args: tuple[str, ...], env: dict[str, str], var: str, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> Any:  # fmt: skip
    """The config ``lukhas worker ARGS`` would run with (``var`` unset but as ``env`` says)."""
    from lukhas_context.processors import worker as worker_module

    seen: list[Any] = []
    monkeypatch.setattr(worker_module, "run_worker", lambda config: seen.append(config) or 0)
    monkeypatch.delenv(var, raising=False)
    argv = ["worker", "--bootstrap", "b:1", "--state-dir", str(tmp_path), *args]
    result = CliRunner().invoke(cli, argv, env=env)
    assert result.exit_code == 0, (result.output, result.exception)
    return seen[0]


@pytest.mark.parametrize(
    ("args", "env", "expected_ms"),
    [
        ((), {}, 30_000),  # the default
        (("--session-timeout", "60"), {}, 60_000),  # never below the session
        (("--rebalance-timeout", "45"), {}, 45_000),
        ((), {"LUKHAS_REBALANCE_TIMEOUT": "90"}, 90_000),
    ],
)
def test_the_worker_asks_the_group_for_a_rebalance_timeout(
    args: tuple[str, ...], env: dict[str, str], expected_ms: int, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    """``--rebalance-timeout`` (env ``LUKHAS_REBALANCE_TIMEOUT``) reaches the worker's
    config; without it, 30 s or the session timeout if that is longer (aiokafka's own
    default, the session timeout, let a slow revocation drop the member: a rebalance storm)."""
    config = _worker_config_of(args, env, "LUKHAS_REBALANCE_TIMEOUT", tmp_path, monkeypatch)
    assert config.rebalance_timeout_ms == expected_ms


@pytest.mark.parametrize(
    ("args", "env", "expected"),
    [
        ((), {}, 512),  # the default: on
        (("--read-queue-budget", "40"), {}, 40),
        ((), {"LUKHAS_READ_QUEUE_BUDGET": "7"}, 7),
        (("--read-queue-budget", "0"), {}, None),  # never shed
    ],
)
def test_the_worker_sheds_reads_over_a_read_queue_budget(
    args: tuple[str, ...], env: dict[str, str], expected: int | None, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    """``--read-queue-budget`` (env ``LUKHAS_READ_QUEUE_BUDGET``) reaches the config."""
    config = _worker_config_of(args, env, "LUKHAS_READ_QUEUE_BUDGET", tmp_path, monkeypatch)
    assert config.read_queue_budget == expected


@pytest.mark.parametrize(
    ("args", "env", "expected_s"),
    [
        ((), {}, 1.0),  # the default
        (("--round-budget-ms", "250"), {}, 0.25),
        ((), {"LUKHAS_ROUND_BUDGET_MS": "2000"}, 2.0),
    ],
)
def test_the_worker_takes_a_round_budget(
    args: tuple[str, ...], env: dict[str, str], expected_s: float, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    """``--round-budget-ms`` (env ``LUKHAS_ROUND_BUDGET_MS``) reaches the config, in seconds."""
    config = _worker_config_of(args, env, "LUKHAS_ROUND_BUDGET_MS", tmp_path, monkeypatch)
    assert config.round_budget_s == expected_s


@pytest.mark.parametrize(
    ("args", "env", "expected"),
    [
        ((), {}, 1024**3),  # the default
        (("--memory-budget", "512MiB"), {}, 512 * 1024**2),
        ((), {"LUKHAS_MEMORY_BUDGET": "2GB"}, 2 * 1000**3),
    ],
)
def test_the_worker_keeps_to_a_memory_budget(
    args: tuple[str, ...], env: dict[str, str], expected: int, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    """``--memory-budget`` (env ``LUKHAS_MEMORY_BUDGET``, default 1 GiB) reaches the config."""
    config = _worker_config_of(args, env, "LUKHAS_MEMORY_BUDGET", tmp_path, monkeypatch)
    assert config.memory_budget_bytes == expected


@pytest.mark.parametrize(
    ("args", "env", "expected"),
    [
        ((), {}, None),
        (("--schema-registry", "http://sr:8081"), {}, "http://sr:8081"),
        (
            (),
            {"LUKHAS_SCHEMA_REGISTRY_URL": "https://u:p@sr/apis/ccompat/v7"},
            "https://u:p@sr/apis/ccompat/v7",
        ),
        ((), {"LUKHAS_SCHEMA_REGISTRY_URL": ""}, None),
    ],
)
def test_the_worker_takes_a_schema_registry(
    args: tuple[str, ...], env: dict[str, str], expected: str | None, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    """``--schema-registry`` (env ``LUKHAS_SCHEMA_REGISTRY_URL``) reaches the config."""
    config = _worker_config_of(args, env, "LUKHAS_SCHEMA_REGISTRY_URL", tmp_path, monkeypatch)
    assert config.schema_registry_url == expected
    assert "u:p@" not in repr(config)


@pytest.mark.parametrize(
    ("args", "env", "expected"),
    [
        ((), {}, False),
        (("--coalesce-changes",), {}, True),
        ((), {"LUKHAS_COALESCE_CHANGES": "1"}, True),
        (("--every-change",), {"LUKHAS_COALESCE_CHANGES": "1"}, False),
    ],
)
def test_the_worker_coalesces_changes_when_told(
    args: tuple[str, ...], env: dict[str, str], expected: bool, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    """``--coalesce-changes`` (env ``LUKHAS_COALESCE_CHANGES``; off by default)."""
    config = _worker_config_of(args, env, "LUKHAS_COALESCE_CHANGES", tmp_path, monkeypatch)
    assert config.coalesce_changes is expected


@pytest.mark.parametrize(
    ("args", "env"),
    [
        (("--coalesce-changes", "--at-least-once"), {}),
        ((), {"LUKHAS_COALESCE_CHANGES": "1", "LUKHAS_EXACTLY_ONCE": "0"}),
    ],
)
def test_coalescing_at_least_once_is_a_usage_error(
    args: tuple[str, ...], env: dict[str, str], tmp_path: Path
) -> None:
    argv = ["worker", "--bootstrap", "b:1", "--state-dir", str(tmp_path), *args]
    result = CliRunner().invoke(cli, argv, env=env)
    assert result.exit_code == 2, result.output
    assert "--coalesce-changes (LUKHAS_COALESCE_CHANGES) needs --exactly-once" in result.output


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("ftp://sr", "must be http(s)://HOST"),
        ("http://", "must be http(s)://HOST"),
        ("http://sr:99999", "not a URL"),
        ("http://sr/x?y=1", "no query or fragment"),
        ("http://u:secret@sr/#f", "'http://u:***@sr/#f'"),
        ("http://sr/" + "a" * 3000, "over 2048 characters"),
    ],
)
def test_a_schema_registry_url_that_is_not_one_is_a_usage_error(
    url: str, says: str, tmp_path: Path
) -> None:
    argv = ["worker", "--bootstrap", "b:1", "--state-dir", str(tmp_path), "--schema-registry", url]
    result = CliRunner().invoke(cli, argv)
    assert result.exit_code == 2, result.output
    assert says in result.output and "secret" not in result.output


@pytest.mark.parametrize(
    ("args", "old", "new"),
    [
        (["get", "x", "--after", "0:1"], "--after", "--min-offset"),
        (["watch", "--from", "earliest", "--limit", "1"], "--from", "--start"),
        (["watch", "--id", "x", "--limit", "1"], "--id", "--context-id"),
        (["inspect", "wal", "--from", "0"], "--from", "--start"),
        (["inspect", "wal", "--id", "x"], "--id", "--context-id"),
        (["dlq", "list", "--id", "x"], "--id", "--context-id"),
    ],
)
def test_old_option_names_still_work_and_say_they_are_deprecated(
    tmp_path: Path, args: list[str], old: str, new: str
) -> None:
    """One vocabulary, the HTTP API's: the old names are hidden, taken, and named as
    deprecated on stderr; with the new name too, a usage error. (Nothing runs here: the
    commands fail for want of a cluster, after the option was taken.)"""
    env = {"LUKHAS_DATA_DIR": str(tmp_path), "LUKHAS_BOOTSTRAP": "", "LUKHAS_API_URL": ""}
    runner = CliRunner()
    done = runner.invoke(cli, args, env=env)
    assert f"lukhas: {old} is deprecated: use {new}" in done.stderr, done.stderr
    assert done.exit_code == 1 and "no cluster" in done.stderr, done.stderr
    both = runner.invoke(cli, [*args, new, "0:2" if new == "--min-offset" else "1"], env=env)
    assert both.exit_code == 2 and f"give {new} only ({old} is its old name)" in both.stderr
    command = args[: 2 if args[0] in ("inspect", "dlq") else 1]
    helped = runner.invoke(cli, [*command, "--help"]).output
    assert new in helped and f"{old} " not in helped, helped


def test_up_never_installs_redis_server_itself(monkeypatch: pytest.MonkeyPatch) -> None:
    """Even as root, a missing redis-server is an error saying how to install it; no package
    manager runs (``make up`` installs it, as a step of its own that says so)."""
    from lukhas_context.ops.cluster import redis_server
    from lukhas_context.ops.exceptions import RedisNotInstalledError

    def no_process(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"ran {args}")

    monkeypatch.setattr(redis_server.shutil, "which", lambda name: None)
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    monkeypatch.setattr(subprocess, "run", no_process)
    monkeypatch.setattr(subprocess, "Popen", no_process)
    with pytest.raises(RedisNotInstalledError, match=r"apt-get install redis-server.*make up"):
        redis_server._redis_server_binary()


_SESSION = "session:=base=30m,min=5m,max=24h,per_read=1m"
_AGENT = "agent:=base=10s,min=1s,max=1m,per_read=0ms,hot=3"


@pytest.mark.parametrize(
    ("args", "env", "expected"),
    [
        ((), {}, None),  # off by default
        (("--ttl-policy", _SESSION), {}, ["session:"]),
        (("--ttl-policy", _SESSION, "--ttl-policy", _AGENT), {}, ["session:", "agent:"]),
        ((), {"LUKHAS_TTL_POLICY": f"{_SESSION};{_AGENT};"}, ["session:", "agent:"]),
        ((), {"LUKHAS_TTL_POLICY": f" {_SESSION} ; {_AGENT} "}, ["session:", "agent:"]),
        ((), {"LUKHAS_TTL_POLICY": ""}, None),
    ],
)
def test_the_worker_takes_ttl_policies(
    args: tuple[str, ...], env: dict[str, str], expected: list[str] | None, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    """``--ttl-policy`` (repeatable; env ``LUKHAS_TTL_POLICY``, ``;``-separated)."""
    config = _worker_config_of(args, env, "LUKHAS_TTL_POLICY", tmp_path, monkeypatch)
    if expected is None:
        assert config.ttl_policies is None
    else:
        assert sorted(p.prefix for p in config.ttl_policies) == sorted(expected)
    assert config.ttl_touch_interval_s == 60.0


@pytest.mark.parametrize(
    ("args", "env", "says"),
    [
        (("--ttl-policy", "s:=base=1h,min=2h,max=3h,per_read=1m"), {}, "min <= base <= max"),
        (("--ttl-policy", "s:=base=1h"), {}, "missing min, max, per_read"),
        ((), {"LUKHAS_TTL_POLICY": "s:=base=1h,min=1m,max=2h,per_read=1q"}, "per_read"),
        (("--ttl-policy", _SESSION, "--ttl-policy", _SESSION), {}, "'session:' given twice"),
        (("--ttl-touch-interval", "0"), {}, "ttl-touch-interval"),
    ],
)
def test_a_bad_ttl_policy_is_a_usage_error(
    args: tuple[str, ...], env: dict[str, str], says: str, tmp_path: Path
) -> None:
    argv = ["worker", "--bootstrap", "b:1", "--state-dir", str(tmp_path), *args]
    result = CliRunner().invoke(cli, argv, env=env)
    assert result.exit_code == 2, result.output
    assert says in result.output


def test_advise_without_a_cluster_or_with_its_api_down_prints_one_line(
    lukhas: Callable[..., Any],
) -> None:
    for args in (("advise",), ("advise", "--json")):
        line = _one_line(lukhas(*args), 1, "lukhas: error: no read API: pass --api")
        assert "no cluster in" in line
    api = f"http://127.0.0.1:{_dead_port()}"
    done = lukhas("advise", "--api", api, "--interval", "1")
    line = _one_line(done, 1, "lukhas: error: cannot reach a worker's read API at ")
    assert api in line and "Traceback" not in done.stderr and done.stdout == ""
    usage = lukhas("advise", "--interval", "0")
    _one_line(usage, 2, "lukhas: usage error: ")


def test_the_worker_takes_its_advice_interval_and_cooldown(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    default = _worker_config_of((), {}, "LUKHAS_API_URL", tmp_path, monkeypatch)
    assert (default.advice_interval_s, default.advice_cooldown_s) == (15.0, 300.0)
    args = ("--advice-interval", "5", "--advice-cooldown", "0")
    config = _worker_config_of(args, {}, "LUKHAS_API_URL", tmp_path, monkeypatch)
    assert (config.advice_interval_s, config.advice_cooldown_s) == (5.0, 0.0)
    for bad in (("--advice-interval", "0"), ("--advice-cooldown", "-1")):
        argv = ["worker", "--bootstrap", "b:1", "--state-dir", str(tmp_path), *bad]
        assert CliRunner().invoke(cli, argv).exit_code == 2
