"""What a window's delivery reports mean for each of its events (DESIGN §1, §4): pure decisions.

Facts: one `Report` per event, in produce order (the window's order, so per aggregate the CDC
order). Decisions: which events are delivered, which go to the dead-letter table, which are
produced again one by one, and which are left for a re-read of the window.

The promise is per-aggregate order. An event of aggregate A that did not get through may be
published again later only if no later event of A is already in Kafka; otherwise publishing it
would put it behind its successor, so it is dead-lettered (the one exception DESIGN §1 allows,
and it is counted like every dead letter).

Why this rarely has to dead-letter anything, given how librdkafka behaves (measured against a
real broker, librdkafka 2.16, see tests/test_publisher_*.py and tests/test_oversize_*.py):
- Retries. With `enable.idempotence` librdkafka retries retriable errors itself, in order, with
  sequence numbers per partition: a retried batch can neither be duplicated nor overtaken.
- Timeouts. relay sets `message.timeout.ms = 0` (librdkafka CONFIGURATION.md: "A time of 0 is
  infinite"), so no record ever fails with `_MSG_TIMED_OUT`: an outage only delays reports.
  A finite timeout could fail an earlier record while a later one of the same partition,
  produced after the broker came back, is acknowledged: exactly the reordering this module
  guards against. relay refuses such an override (`relay.connect.producer_config`).
- Purge on a fatal error. librdkafka purges what is still queued (`_PURGE_QUEUE`) and lets
  in-flight requests finish. The queue of a partition is FIFO behind its in-flight batches, so
  the failed records are a suffix of each partition: nothing after them can be acknowledged.
- Per-partition batching. The broker accepts or refuses a whole batch. A refusal with a
  per-record error (`MSG_SIZE_TOO_LARGE`, `INVALID_RECORD`, …) fails innocent neighbours too,
  while later batches of the partition are still acknowledged (measured). relay therefore keeps
  `batch.size` within the topic's `max.message.bytes`, so an oversized record always travels
  alone (`alone`) and fails alone. If a shared batch is refused anyway (the limit was lowered
  behind relay's back), its records are `SUSPECT`: produced again one by one, unless a later
  event of their aggregate already got through.
"""
from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field
from enum import Enum


class Status(Enum):
    ACKED = "acked"
    PERMANENT = "permanent"  # the record itself can never be written (unknown topic, no access, …)
    SUSPECT = "suspect"  # a batch-level refusal: this record or a neighbour in its batch is bad
    TRANSIENT = "transient"  # not written, for a reason that passes
    MISSING = "missing"  # no report (purged, or not produced)


@dataclass(frozen=True)
class Report:
    order_key: Hashable  # (topic, record key): the events whose relative order relay keeps
    status: Status
    error: str = ""  # error class, e.g. the Kafka error name
    message: str = ""
    alone: bool = False  # the record had a batch to itself, so a refusal was its own


@dataclass
class Decision:
    delivered: list[int] = field(default_factory=list)
    dead_letter: list[tuple[int, str, str]] = field(default_factory=list)  # index, error class, message
    retry_alone: list[int] = field(default_factory=list)  # suspects to produce again, one at a time, in order
    reread: list[int] = field(default_factory=list)  # left for a re-read of the window (checkpoint kept)

    @property
    def settled(self) -> bool:
        return not self.retry_alone and not self.reread


def decide(reports: Sequence[Report]) -> Decision:
    """Sort every event of a window; `reports[i]` is the i-th event produced.

    Producing the suspects again is a loop over this function: produce `retry_alone[0]` on its
    own, replace its report by the new one (`alone=True`), decide again, until `retry_alone` is
    empty. One at a time and in order, so a suspect never overtakes an earlier one of its aggregate.
    """
    last_acked: dict[Hashable, int] = {}
    for i, r in enumerate(reports):
        if r.status is Status.ACKED:
            last_acked[r.order_key] = i
    out = Decision()
    waiting: set[Hashable] = set()  # aggregates with an earlier event left for the re-read
    for i, r in enumerate(reports):
        overtaken = last_acked.get(r.order_key, -1) > i
        if r.status is Status.ACKED:
            out.delivered.append(i)
        elif r.status is Status.PERMANENT or (r.status is Status.SUSPECT and r.alone):
            out.dead_letter.append((i, r.error, r.message))
        elif overtaken:
            out.dead_letter.append((i, r.error, f"{r.message} (a later event of its aggregate was already "
                                                f"delivered: publishing it now would reorder them)"))
        elif r.status is Status.SUSPECT and r.order_key not in waiting:
            out.retry_alone.append(i)
        else:  # transient, missing, or a suspect behind an event that waits for the re-read
            out.reread.append(i)
            waiting.add(r.order_key)
    return out

