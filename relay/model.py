"""The data that flows through relay: tasks, CDC changes, outbox events (DESIGN §2, §3, §6)."""
from __future__ import annotations

import uuid
from dataclasses import dataclass, field

# Kafka record headers (DESIGN §6): a contract with consumers and with `relay verify`.
HEADER_ID = "id"
HEADER_EVENT_TYPE = "event_type"
HEADER_AGGREGATE_TYPE = "aggregate_type"
HEADER_SOURCE = "relay_source"
HEADER_CDC_TIME = "cdc_time"
RESERVED_HEADERS = frozenset({HEADER_ID, HEADER_EVENT_TYPE, HEADER_AGGREGATE_TYPE, HEADER_SOURCE, HEADER_CDC_TIME})


# A `cdc$time` timeuuid: its 16 bytes as the reader fetches it (a uuid.UUID costs ~3 µs per row to
# decode), or a uuid.UUID where tools and tests build one. `cdc_time_bytes`/`cdc_time_uuid` convert.
CdcTime = bytes | uuid.UUID


def cdc_time_bytes(t: CdcTime) -> bytes:
    return t if type(t) is bytes else t.bytes  # type: ignore[union-attr]


def cdc_time_uuid(t: CdcTime) -> uuid.UUID:
    return uuid.UUID(bytes=t) if type(t) is bytes else t  # type: ignore[return-value]


@dataclass(frozen=True)
class Generation:
    """A period with one stream set: a vnode generation (all tables) or a tablets table's stream set."""

    table: str  # ks.table
    start_us: int
    end_us: int | None  # start of the next generation, once known
    streams: tuple[bytes, ...]
    tablets: bool

    @property
    def key(self) -> tuple[str, int]:
        return self.table, self.start_us


@dataclass(frozen=True)
class Task:
    """The unit of work: one vnode's streams (or one tablet stream) of one table in one generation."""

    table: str
    generation_us: int
    task_id: int
    streams: tuple[bytes, ...]
    end_us: int | None = None  # the generation's end, once the next one is known

    @property
    def key(self) -> tuple[str, int, int]:
        return self.table, self.generation_us, self.task_id


@dataclass(slots=True)
class Change:
    """One CDC group: the rows of one (stream, cdc$time) up to `cdc$end_of_batch`."""

    stream_id: bytes
    cdc_time: CdcTime
    rows: tuple  # in batch_seq_no order: dicts (column name -> value), or tuples when `columns` is set
    columns: tuple[str, ...] | None = None  # the column order of tuple rows (one object shared by a page)

    @property
    def dict_rows(self) -> tuple[dict[str, object], ...]:
        """The rows as dicts whatever form they came in (tools and tests; the hot path maps tuples)."""
        if self.columns is None:
            return self.rows
        return tuple(dict(zip(self.columns, row, strict=False)) for row in self.rows)


@dataclass(slots=True)
class OutboxEvent:
    """One Kafka record to publish, with the CDC identity it came from."""

    source: str  # ks.table
    stream_id: bytes
    cdc_time: CdcTime
    cdc_time_us: int
    batch_seq_no: int
    event_id: str
    aggregate_type: str
    aggregate_id: str
    event_type: str
    topic: str
    key: bytes
    payload: bytes | None
    headers: dict[str, str] = field(default_factory=dict)
    dedup_digest: bytes | None = field(default=None, repr=False, compare=False)  # computed once, by relay.dedup

    @property
    def identity(self) -> tuple[bytes, CdcTime, int]:
        """(stream, cdc$time, batch_seq_no): unique per CDC log row, used for dedup and dead letters."""
        return self.stream_id, self.cdc_time, self.batch_seq_no

    def kafka_headers(self) -> list[tuple[str, bytes]]:
        """relay's five headers, then the extra ones (DESIGN §6). Built once per produce, so built
        directly: no intermediate lists, one encode per value."""
        headers = [(HEADER_ID, self.event_id.encode()), (HEADER_EVENT_TYPE, self.event_type.encode()),
                   (HEADER_AGGREGATE_TYPE, self.aggregate_type.encode()), (HEADER_SOURCE, self.source.encode()),
                   (HEADER_CDC_TIME, b"%d" % self.cdc_time_us)]
        if self.headers:
            # Extra headers never shadow relay's own: consumers dedup and audit by them.
            headers += [(k, v.encode()) for k, v in self.headers.items() if k not in RESERVED_HEADERS]
        return headers
