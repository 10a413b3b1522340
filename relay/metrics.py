"""Prometheus metrics (DESIGN §9), multiprocess mode.

The supervisor sets PROMETHEUS_MULTIPROC_DIR before anything imports prometheus_client, and
each process builds its own metric objects after it starts (no module-level metrics, so
nothing writes a stray 0 sample on import). Never label by stream id: thousands of streams
times process files would make every scrape slow (LIBRARIES.md §1).
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120)


def prepare_multiproc_dir(default_dir: str) -> str:
    """Point PROMETHEUS_MULTIPROC_DIR at an empty directory. Must run before any import of
    prometheus_client (its value class is chosen at import time); wiping prevents a restarted
    pod with recycled pids from resurrecting old values."""
    import sys

    if "prometheus_client" in sys.modules:
        raise RuntimeError("prometheus_client was imported before PROMETHEUS_MULTIPROC_DIR was set")
    path = os.environ.get("PROMETHEUS_MULTIPROC_DIR") or default_dir
    shutil.rmtree(path, ignore_errors=True)
    Path(path).mkdir(parents=True, exist_ok=True)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = path
    return path


class WorkerMetrics:
    """Metrics written by a worker process."""

    def __init__(self) -> None:
        from prometheus_client import Counter, Gauge, Histogram

        r = None  # values go to the multiprocess files; no per-process registry needed
        self.events_read = Counter("relay_events_read_total", "CDC log rows read", ["table"], registry=r)
        self.events_published = Counter("relay_events_published_total", "Events acknowledged by Kafka",
                                        ["table"], registry=r)
        self.events_deduplicated = Counter("relay_events_deduplicated_total",
                                           "Events skipped because their dedup key was already set", ["table"],
                                           registry=r)
        self.events_dead_lettered = Counter("relay_events_dead_lettered_total", "Events written to dead_letters",
                                            ["table", "reason"], registry=r)
        self.events_skipped = Counter("relay_events_skipped_total",
                                      "CDC rows not published (operations not configured, images)",
                                      ["table", "operation"], registry=r)
        self.publish_latency = Histogram("relay_publish_latency_seconds", "produce() to delivery report",
                                         ["table"], buckets=LATENCY_BUCKETS, registry=r)
        self.e2e_latency = Histogram("relay_end_to_end_latency_seconds", "cdc$time to Kafka acknowledgement",
                                     ["table"], buckets=LATENCY_BUCKETS, registry=r)
        self.task_lag = Gauge("relay_task_lag_seconds", "now - checkpoint, max over tasks", ["table"],
                              multiprocess_mode="livemax", registry=r)
        self.checkpoint_writes = Counter("relay_checkpoint_writes_total", "Checkpoints written", ["table"],
                                         registry=r)
        self.cql_read = Histogram("relay_cql_read_duration_seconds", "Reading one CDC window", ["table"],
                                  buckets=LATENCY_BUCKETS, registry=r)
        self.retries = Counter("relay_retry_attempts_total", "Retries by operation", ["operation"], registry=r)
        self.breaker_state = Gauge("relay_breaker_state", "Kafka breaker: 0 closed, 1 open, 2 half-open",
                                   ["worker"], multiprocess_mode="livemax", registry=r)
        self.breaker_transitions = Counter("relay_breaker_transitions_total", "Kafka breaker transitions",
                                           ["state"], registry=r)
        self.dedup_unavailable = Counter("relay_dedup_unavailable_total",
                                         "Events handled without Redis dedup (fail-open)", ["table"], registry=r)
        self.ttl_margin = Gauge("relay_checkpoint_ttl_margin_seconds",
                                "Seconds before the oldest checkpoint falls out of the CDC TTL", ["table"],
                                multiprocess_mode="livemin", registry=r)
        self.clock_ahead = Gauge("relay_clock_ahead_seconds",
                                 "How far relay's clock runs ahead of the cluster's (windows are held back "
                                 "by as much)", ["worker"], multiprocess_mode="livemax", registry=r)
        self.dlq_write_failures = Counter("relay_dlq_write_failures_total",
                                          "Dead-letter writes that failed after their retries", ["table"],
                                          registry=r)
        self.fence_events = Counter("relay_fence_events_total",
                                    "Reads whose events a worker refused to publish: its lease deadline had passed",
                                    registry=r)


class SupervisorMetrics:
    def __init__(self) -> None:
        from prometheus_client import Counter, Gauge, Histogram

        self.workers_alive = Gauge("relay_workers_alive", "Worker processes alive", multiprocess_mode="livemax",
                                   registry=None)
        self.worker_restarts = Counter("relay_worker_restarts_total", "Worker processes restarted", registry=None)
        self.generation = Gauge("relay_generation_current_seconds", "Start of the generation being read",
                                ["table"], multiprocess_mode="livemax", registry=None)
        self.workers_hung = Counter("relay_worker_hangs_total",
                                    "Workers killed because their loop made no progress", registry=None)
        self.generations_expired = Counter("relay_generations_expired_total",
                                           "Generations skipped because their rows outlived the CDC TTL",
                                           ["table"], registry=None)
        self.generations_disappeared = Counter("relay_generations_disappeared_total",
                                               "Generations seen earlier and now missing from the CDC metadata",
                                               ["table"], registry=None)
        # Leases (DESIGN §5b)
        self.slots_owned = Gauge("relay_slots_owned", "Lease slots this replica owns", multiprocess_mode="livemax",
                                 registry=None)
        self.slots_total = Gauge("relay_slots_total", "Lease slots configured (leases.slots)",
                                 multiprocess_mode="livemax", registry=None)
        self.rebalances = Counter("relay_rebalances_total", "Rebalance callbacks, by kind", ["kind"], registry=None)
        self.rebalance_seconds = Histogram("relay_rebalance_seconds",
                                           "Time spent in a revoke or lost callback, including the drain",
                                           buckets=LATENCY_BUCKETS, registry=None)
        self.slots_lost = Counter("relay_slots_lost_total", "Lease slots lost (session expired or fenced)",
                                  registry=None)


class DlqMetrics:
    """Dead letters, as the supervisor's dead-letter monitor sees them (relay.autoreplay)."""

    def __init__(self) -> None:
        from prometheus_client import Counter, Gauge

        self.pending = Gauge("relay_dlq_pending", "Dead letters with status pending (last 7 days)",
                             ["table"], multiprocess_mode="livemax", registry=None)
        self.letters = Gauge("relay_dlq_dead_letters", "Dead letters of the last 7 days by status and error class",
                             ["table", "status", "error_class"], multiprocess_mode="livemax", registry=None)
        self.oldest_pending_age = Gauge("relay_dlq_oldest_pending_age_seconds",
                                        "Age of the oldest pending or parked dead letter (since its first failure)",
                                        ["table"], multiprocess_mode="livemax", registry=None)
        self.replayed = Counter("relay_dlq_replayed_total", "Dead letters replayed by auto-recovery",
                                ["table", "error_class"], registry=None)
        self.replay_failed = Counter("relay_dlq_replay_failed_total",
                                     "Auto-recovery attempts of dead letters that failed again",
                                     ["table", "error_class"], registry=None)


def registry():
    """A registry that merges every process's files: what /metrics serves."""
    from prometheus_client import CollectorRegistry, multiprocess

    reg = CollectorRegistry()
    multiprocess.MultiProcessCollector(reg)
    return reg


def mark_dead(pid: int) -> None:
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(pid)
