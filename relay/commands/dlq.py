"""`relay dlq list|stats`: inspect the dead-letter table (DESIGN §5, §8).

`dead_letters` is partitioned by (source table, UTC day of the event's `cdc$time`), so both
commands read one partition per table and day, newest day first, and never scan the table.
`replay` and `discard` come with their own issue.
"""
from __future__ import annotations

import json
import uuid
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any

from relay.config import Config
from relay.errors import UserError

STATUSES = ("pending", "replayed", "discarded")
LIST_COLUMNS = ("source_table", "day", "cdc_time", "stream_id", "batch_seq_no", "event_id", "aggregate_type",
                "aggregate_id", "event_type", "topic", "key", "payload", "headers", "error_class", "error_message",
                "attempts", "first_failed_at", "last_failed_at", "status")
STATS_COLUMNS = ("status", "error_class", "first_failed_at", "last_failed_at", "cdc_time")
MESSAGE_WIDTH = 60  # error messages are cut to this in the human listing (JSON has them whole)


# --------------------------------------------------------------------------- values

def _utc(value: datetime | None) -> datetime | None:
    if value is None:
        return None
    return value if value.tzinfo else value.replace(tzinfo=UTC)  # the driver returns naive UTC


def cdc_datetime(cdc_time: uuid.UUID) -> datetime:
    from relay import timeuuid

    return datetime.fromtimestamp(timeuuid.to_micros(cdc_time) / 1e6, tz=UTC)


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


@dataclass(frozen=True)
class DeadLetter:
    source_table: str
    day: date
    cdc_time: uuid.UUID
    stream_id: bytes
    batch_seq_no: int
    event_id: str | None
    aggregate_type: str | None
    aggregate_id: str | None
    event_type: str | None
    topic: str | None
    key: bytes | None
    payload_size: int | None
    headers: dict[str, str]
    error_class: str | None
    error_message: str | None
    attempts: int | None
    first_failed_at: datetime | None
    last_failed_at: datetime | None
    status: str | None

    @classmethod
    def from_row(cls, row: Sequence[Any]) -> DeadLetter:
        v = dict(zip(LIST_COLUMNS, row, strict=True))
        day = v["day"]
        payload = v.pop("payload")
        return cls(**{**v, "day": day.date() if hasattr(day, "date") else day,
                      "headers": dict(v["headers"] or {}), "payload_size": None if payload is None else len(payload),
                      "first_failed_at": _utc(v["first_failed_at"]), "last_failed_at": _utc(v["last_failed_at"])})

    @property
    def cdc_at(self) -> datetime:
        return cdc_datetime(self.cdc_time)

    def to_dict(self) -> dict[str, Any]:
        return {
            "source_table": self.source_table, "day": self.day.isoformat(), "cdc_time": str(self.cdc_time),
            "cdc_at": self.cdc_at.isoformat(), "stream_id": "0x" + self.stream_id.hex(),
            "batch_seq_no": self.batch_seq_no, "event_id": self.event_id, "aggregate_type": self.aggregate_type,
            "aggregate_id": self.aggregate_id, "event_type": self.event_type, "topic": self.topic,
            "key": None if self.key is None else self.key.decode("utf-8", "replace"),
            "payload_size": self.payload_size, "headers": self.headers, "error_class": self.error_class,
            "error_message": self.error_message, "attempts": self.attempts,
            "first_failed_at": _iso(self.first_failed_at), "last_failed_at": _iso(self.last_failed_at),
            "status": self.status,
        }


@dataclass
class TableStats:
    total: int = 0
    by_status: dict[str, int] = field(default_factory=dict)
    oldest_pending: datetime | None = None  # when the oldest pending dead letter first failed


@dataclass
class DlqStats:
    days: int
    now: datetime
    counts: dict[tuple[str, str, str], int] = field(default_factory=dict)  # (table, status, error class) -> n
    tables: dict[str, TableStats] = field(default_factory=dict)

    @property
    def total(self) -> int:
        return sum(t.total for t in self.tables.values())

    def by_status(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for stats in self.tables.values():
            for status, n in stats.by_status.items():
                out[status] = out.get(status, 0) + n
        return out

    def oldest_pending(self) -> tuple[str, float] | None:
        """(table, age in seconds) of the oldest pending dead letter, if any."""
        pending = [(t.oldest_pending, name) for name, t in self.tables.items() if t.oldest_pending]
        if not pending:
            return None
        when, name = min(pending)
        return name, max((self.now - when).total_seconds(), 0.0)

    def to_dict(self) -> dict[str, Any]:
        oldest = self.oldest_pending()
        return {
            "days": self.days, "total": self.total, "by_status": self.by_status(),
            "oldest_pending_age_seconds": round(oldest[1], 3) if oldest else None,
            "oldest_pending_table": oldest[0] if oldest else None,
            "counts": [{"table": t, "status": s, "error_class": e, "count": n}
                       for (t, s, e), n in sorted(self.counts.items())],
            "tables": {name: {"total": t.total, "by_status": t.by_status,
                              "oldest_pending_age_seconds": round((self.now - t.oldest_pending).total_seconds(), 3)
                              if t.oldest_pending else None} for name, t in sorted(self.tables.items())},
        }


# --------------------------------------------------------------------------- reading

def recent_days(days: int, today: date) -> list[date]:
    """The last `days` UTC days, today included, newest first."""
    return [today - timedelta(days=i) for i in range(days)]


def tables_for(cfg: Config, table: str | None) -> list[str]:
    # A table no longer configured can still have dead letters, so --table is not checked against the config.
    if table:
        return [table]
    if not cfg.tables:
        raise UserError(f"{cfg.source}: no [[tables]] configured; pass --table keyspace.table")
    return [t.name for t in cfg.tables]


def check_schema(session, keyspace: str) -> None:
    cluster = session.cluster
    cluster.refresh_keyspace_metadata(keyspace)  # the schema may be newer than this session's metadata
    if keyspace not in cluster.metadata.keyspaces:
        raise UserError(f"relay keyspace {keyspace!r} does not exist: run `relay schema apply` first")
    cluster.refresh_table_metadata(keyspace, "dead_letters")
    if "dead_letters" not in cluster.metadata.keyspaces[keyspace].tables:
        raise UserError(f"{keyspace}.dead_letters does not exist: run `relay schema apply` first")


def _partitions(session, keyspace: str, columns: Sequence[str], tables: Iterable[str], days: Sequence[date]
                ) -> Iterator[tuple[str, Iterable[Sequence[Any]]]]:
    """(table, rows) per (table, day) partition, newest day first; rows in cdc_time DESC order."""
    stmt = session.prepare(f"SELECT {', '.join(columns)} FROM {keyspace}.dead_letters "
                           f"WHERE source_table = ? AND day = ?")
    for table in tables:
        for day in days:
            yield table, session.execute(stmt, (table, day))


def list_dead_letters(session, keyspace: str, tables: Sequence[str], days: int, *, status: str | None = None,
                      limit: int = 100, today: date | None = None) -> list[DeadLetter]:
    """The newest dead letters (by event time) across tables, optionally of one status; limit 0 = all."""
    check_schema(session, keyspace)
    found: list[DeadLetter] = []
    day_list = recent_days(days, today or datetime.now(UTC).date())
    for _, rows in _partitions(session, keyspace, LIST_COLUMNS, tables, day_list):
        taken = 0
        for row in rows:
            letter = DeadLetter.from_row(row)
            if status and letter.status != status:
                continue
            found.append(letter)
            taken += 1
            if limit and taken >= limit:
                break  # rows come newest first: the rest of this partition cannot make the cut
    found.sort(key=lambda d: (d.cdc_at, d.cdc_time.bytes), reverse=True)
    return found[:limit] if limit else found


def dlq_stats(session, keyspace: str, tables: Sequence[str], days: int, *, now: datetime | None = None
              ) -> DlqStats:
    check_schema(session, keyspace)
    now = now or datetime.now(UTC)
    stats = DlqStats(days, now, tables={t: TableStats() for t in tables})
    for table, rows in _partitions(session, keyspace, STATS_COLUMNS, tables, recent_days(days, now.date())):
        per_table = stats.tables[table]
        for status, error_class, first_failed, last_failed, cdc_time in rows:
            status, error_class = status or "unknown", error_class or "unknown"
            key = (table, status, error_class)
            stats.counts[key] = stats.counts.get(key, 0) + 1
            per_table.total += 1
            per_table.by_status[status] = per_table.by_status.get(status, 0) + 1
            if status == "pending":
                failed = _utc(first_failed) or _utc(last_failed) or cdc_datetime(cdc_time)
                if per_table.oldest_pending is None or failed < per_table.oldest_pending:
                    per_table.oldest_pending = failed
    return stats


# --------------------------------------------------------------------------- rendering

def _columns(headers: Sequence[str], rows: Sequence[Sequence[str]], right: Sequence[int] = ()) -> list[str]:
    widths = [max([len(h), *(len(r[i]) for r in rows)]) for i, h in enumerate(headers)]

    def fmt(cells: Sequence[str]) -> str:
        return "  ".join(c.rjust(w) if i in right else c.ljust(w)
                         for i, (c, w) in enumerate(zip(cells, widths, strict=True))).rstrip()

    return [fmt(headers), *(fmt(r) for r in rows)]


def _short(text: str | None, width: int) -> str:
    text = " ".join((text or "").split())
    return text if len(text) <= width else text[:width - 1] + "…"


def render_list(letters: Sequence[DeadLetter], days: int, status: str | None, limit: int) -> str:
    scope = f"in the last {days} day(s)" + (f" with status {status}" if status else "")
    if not letters:
        return f"no dead letters {scope}"
    rows = [[d.cdc_at.strftime("%Y-%m-%d %H:%M:%S"), d.source_table, d.status or "", d.error_class or "",
             str(d.attempts or 0), d.event_id or "", f"{d.aggregate_type or ''}/{d.aggregate_id or ''}",
             d.topic or "", _short(d.error_message, MESSAGE_WIDTH)] for d in letters]
    lines = _columns(["CDC TIME (UTC)", "TABLE", "STATUS", "ERROR", "ATTEMPTS", "EVENT ID", "AGGREGATE", "TOPIC",
                      "MESSAGE"], rows, right=(4,))
    more = f" (the newest {limit}; use --limit to see more)" if limit and len(letters) >= limit else ""
    return "\n".join([*lines, f"{len(letters)} dead letter(s) {scope}{more}"])


def render_stats(stats: DlqStats, keyspace: str) -> str:
    if not stats.total:
        return f"no dead letters in the last {stats.days} day(s) ({keyspace}.dead_letters)"
    rows = [[t, s, e, str(n)] for (t, s, e), n in sorted(stats.counts.items())]
    lines = [f"dead letters in the last {stats.days} day(s) ({keyspace}.dead_letters)",
             *_columns(["TABLE", "STATUS", "ERROR CLASS", "COUNT"], rows, right=(3,))]
    by_status = ", ".join(f"{s} {n}" for s, n in sorted(stats.by_status().items()))
    lines.append(f"total {stats.total}: {by_status}")
    oldest = stats.oldest_pending()
    if oldest:
        from relay.progress import format_duration

        lines.append(f"oldest pending: {format_duration(oldest[1])} ({oldest[0]})")
    return "\n".join(lines)


# --------------------------------------------------------------------------- CLI

def register(sub, common) -> None:
    p = sub.add_parser("dlq", parents=[common], help="inspect dead letters (list, stats)",
                       description="Inspect the dead-letter table.")
    action = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    ls = action.add_parser("list", parents=[common], help="list recent dead letters, newest first")
    _scope_arguments(ls)
    ls.add_argument("--status", choices=STATUSES, default=None, help="only dead letters with this status")
    ls.add_argument("--limit", type=int, default=100, help="at most this many (default 100; 0 = all)")
    ls.add_argument("--json", action="store_true", help="print JSON")
    ls.set_defaults(func=_list)
    st = action.add_parser("stats", parents=[common], help="counts by table, status and error class")
    _scope_arguments(st)
    st.add_argument("--json", action="store_true", help="print JSON")
    st.set_defaults(func=_stats)


def _scope_arguments(p) -> None:
    p.add_argument("--table", default=None, help="one table (keyspace.table); default: every configured table")
    p.add_argument("--days", type=int, default=7, help="look back this many days, today included (default 7)")


def _open(args):
    from relay import config, connect

    cfg = config.load(args.config)
    if args.days < 1:
        raise UserError("--days must be at least 1")
    return cfg, tables_for(cfg, args.table), connect.cql_session(cfg)


def _list(args) -> int:
    if args.limit < 0:
        raise UserError("--limit must be >= 0 (0 = all)")
    cfg, tables, session = _open(args)
    try:
        letters = list_dead_letters(session, cfg.scylla.relay_keyspace, tables, args.days, status=args.status,
                                    limit=args.limit)
    finally:
        session.cluster.shutdown()
    if args.json:
        print(json.dumps({"days": args.days, "tables": tables, "status": args.status, "count": len(letters),
                          "dead_letters": [d.to_dict() for d in letters]}, indent=2))
    else:
        print(render_list(letters, args.days, args.status, args.limit))
    return 0


def _stats(args) -> int:
    cfg, tables, session = _open(args)
    try:
        stats = dlq_stats(session, cfg.scylla.relay_keyspace, tables, args.days)
    finally:
        session.cluster.shutdown()
    print(json.dumps(stats.to_dict(), indent=2) if args.json else render_stats(stats, cfg.scylla.relay_keyspace))
    return 0
