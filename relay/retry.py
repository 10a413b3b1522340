"""stamina retry policies from [retry] (DESIGN §4): the same policy for CQL, Redis and DLQ writes."""
from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import stamina

from relay.config import Config

T = TypeVar("T")


def cql_errors() -> tuple[type[BaseException], ...]:
    from cassandra import OperationTimedOut, ReadTimeout, Unavailable, WriteTimeout
    from cassandra.cluster import NoHostAvailable
    from cassandra.connection import ConnectionException

    return (OperationTimedOut, ReadTimeout, WriteTimeout, Unavailable, NoHostAvailable, ConnectionException)


def dlq_errors() -> tuple[type[BaseException], ...]:
    """Every driver error, for dead-letter writes: a refused write (InvalidRequest, WriteFailure)
    is retried too, then surfaced - never left as a silent re-read loop."""
    from cassandra import DriverException, RequestExecutionException, RequestValidationException

    return (*cql_errors(), DriverException, RequestExecutionException, RequestValidationException)


class Retrier:
    """Runs an operation under the configured policy; `on_retry(operation)` counts each retry."""

    def __init__(self, cfg: Config, on_retry: Callable[[str], None] | None = None) -> None:
        self.attempts, self.wait_initial, self.wait_max = cfg.retry.policy()
        self.on_retry = on_retry

    def call(self, operation: str, on: tuple[type[BaseException], ...], fn: Callable[..., T], *args) -> T:
        for attempt in stamina.retry_context(on=on, attempts=self.attempts, timeout=None,
                                             wait_initial=self.wait_initial, wait_max=self.wait_max,
                                             wait_jitter=self.wait_initial):
            with attempt:
                if attempt.num > 1 and self.on_retry:
                    self.on_retry(operation)
                return fn(*args)
        raise AssertionError("unreachable: stamina re-raises the last error")
