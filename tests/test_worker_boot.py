"""A worker's start against the real services, in this process (relay run starts it in its own)."""
from __future__ import annotations

import logging
from multiprocessing import Pipe

import pytest


def test_a_worker_started_before_schema_apply_fails_in_one_line_without_a_driver_traceback(
        relay_config, keyspace, kafka_bootstrap, redis_url, caplog):
    """Workers boot beside the supervisor's schema check (relay run spawns them first). Without
    relay's tables a worker must not prepare its statements: the driver would log the refusal
    with a traceback at ERROR before the supervisor's one-line error (CI saw that race)."""
    from relay import config
    from relay.errors import ConfigError
    from relay.worker import Worker

    cfg = config.load(relay_config(apply_schema=False))
    _, child = Pipe()
    worker = Worker(0, cfg, child, None)
    with caplog.at_level(logging.DEBUG), pytest.raises(ConfigError) as info:
        worker.boot()
    assert keyspace in str(info.value) and "relay schema apply" in str(info.value)
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert not errors, [f"{r.name}: {r.getMessage()}" for r in errors]
    worker.publisher.close(1.0)
