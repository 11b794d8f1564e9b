"""``ClientConfig``: every deadline is a positive finite number of seconds, and a client may
not ask for a transaction longer than ``MAX_TRANSACTION_TIMEOUT_S`` (a killed client's open
transaction holds its partitions that long)."""

from __future__ import annotations

import math

import pytest

from lukhas_context.streams.client import MAX_TRANSACTION_TIMEOUT_S, ClientConfig
from lukhas_context.streams.exceptions import InvalidConfigError, ValidationError

DEADLINES = ("timeout_s", "request_timeout_s", "close_timeout_s", "transaction_timeout_s")


def test_defaults_are_short_and_valid() -> None:
    config = ClientConfig("k:9092")
    assert config.transaction_timeout_s == 10.0 <= MAX_TRANSACTION_TIMEOUT_S
    assert 0 < config.diagnosis_s < config.timeout_s
    assert config.send_window_s + config.diagnosis_s == config.timeout_s
    assert config.kafka_request_timeout_s <= config.timeout_s / 2


@pytest.mark.parametrize("name", DEADLINES)
@pytest.mark.parametrize("value", [0, -1, math.nan, math.inf, True, "5"])
def test_a_deadline_out_of_range_is_a_typed_error(name: str, value: object) -> None:
    with pytest.raises(InvalidConfigError, match=name):
        ClientConfig("k:9092", **{name: value})  # type: ignore[arg-type]


def test_a_transaction_timeout_over_the_maximum_is_refused() -> None:
    ClientConfig("k:9092", transaction_timeout_s=MAX_TRANSACTION_TIMEOUT_S)
    with pytest.raises(InvalidConfigError, match="transaction_timeout_s must be at most 60"):
        ClientConfig("k:9092", transaction_timeout_s=900)  # Kafka's own default maximum


def test_config_errors_are_validation_errors_and_value_errors() -> None:
    assert issubclass(InvalidConfigError, ValidationError)
    with pytest.raises(ValueError, match="send_attempts"):
        ClientConfig("k:9092", send_attempts=0)


def test_a_short_deadline_shortens_each_kafka_request() -> None:
    config = ClientConfig("k:9092", timeout_s=4, request_timeout_s=10)
    assert config.kafka_request_timeout_s == 2


def test_a_read_bound_is_within_the_log_s_range() -> None:
    import pytest as _pytest

    from lukhas_context.streams.position import parse_bound

    assert parse_bound("5").offset == 5 and parse_bound("ms:0").time_ms == 0
    for bad, said in [("1969-12-31T23:59:59Z", "before 1970"), ("ms:" + "9" * 20, "out of range"),
                      ("9" * 20, "out of range"), ("yesterday", "neither")]:  # fmt: skip
        with _pytest.raises(ValueError, match=said):
            parse_bound(bad)
