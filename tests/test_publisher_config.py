"""relay.connect.producer_config: librdkafka never gives up on a record, batches fit the topics."""
from __future__ import annotations

import pytest
from publisher_helpers import config

from relay.connect import producer_config
from relay.errors import ConfigError


def test_records_never_time_out_by_default():
    assert producer_config(config("127.0.0.1:9092"))["message.timeout.ms"] == 0


@pytest.mark.parametrize("key", ["message.timeout.ms", "delivery.timeout.ms"])
def test_a_finite_message_timeout_is_refused_with_the_key_named(key):
    with pytest.raises(ConfigError, match=f"kafka.producer.{key}.*delivery_timeout_seconds"):
        producer_config(config("127.0.0.1:9092", **{key: 30000}))
    assert producer_config(config("127.0.0.1:9092", **{key: 0}))[key] == 0


def test_batch_size_is_capped_by_the_topics_but_never_raised():
    assert producer_config(config("127.0.0.1:9092"), batch_size=9_936)["batch.size"] == 9_936
    assert producer_config(config("127.0.0.1:9092", **{"batch.size": 5_000}), batch_size=9_936)["batch.size"] == 5_000
    assert "batch.size" not in producer_config(config("127.0.0.1:9092"))
