"""`relay dlq list|stats`: inspect the dead-letter table (DESIGN §5, §8).

`dead_letters` is partitioned by (source table, UTC day of the event's `cdc$time`), so both
commands read one partition per table and day, newest day first, and never scan the table.
`show`, `replay` and `discard` act on dead letters (DESIGN §4b, relay.dlqreplay).
"""
from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any

from relay.config import Config
from relay.dlqstore import (
    LIST_COLUMNS,
    OPEN_STATUSES,
    STATS_COLUMNS,
    STATUSES,
    DeadLetter,
    cdc_datetime,
    partitions,
    recent_days,
)
from relay.dlqstore import utc as _utc
from relay.errors import UserError
from relay.schema import require_relay_tables

MESSAGE_WIDTH = 60  # error messages are cut to this in the human listing (JSON has them whole)
WAITING = ("pending", "parked")  # statuses whose age `stats` reports: they wait for a replay


@dataclass
class TableStats:
    total: int = 0
    by_status: dict[str, int] = field(default_factory=dict)
    oldest_pending: datetime | None = None  # when the oldest pending (or parked) dead letter first failed


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

def tables_for(cfg: Config, table: str | None) -> list[str]:
    # A table no longer configured can still have dead letters, so --table is not checked against the config.
    if table:
        return [table]
    if not cfg.tables:
        raise UserError(f"{cfg.source}: no [[tables]] configured; pass --table keyspace.table")
    return [t.name for t in cfg.tables]


def list_dead_letters(session, keyspace: str, tables: Sequence[str], days: int, *, status: str | None = None,
                      limit: int = 100, today: date | None = None) -> list[DeadLetter]:
    """The newest dead letters (by event time) across tables, optionally of one status; limit 0 = all."""
    require_relay_tables(session, keyspace)
    found: list[DeadLetter] = []
    day_list = recent_days(days, today or datetime.now(UTC).date())
    for _, rows in partitions(session, keyspace, LIST_COLUMNS, tables, day_list):
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
    require_relay_tables(session, keyspace)
    now = now or datetime.now(UTC)
    stats = DlqStats(days, now, tables={t: TableStats() for t in tables})
    for table, rows in partitions(session, keyspace, STATS_COLUMNS, tables, recent_days(days, now.date())):
        per_table = stats.tables[table]
        for status, error_class, first_failed, last_failed, cdc_time in rows:
            status, error_class = status or "unknown", error_class or "unknown"
            key = (table, status, error_class)
            stats.counts[key] = stats.counts.get(key, 0) + 1
            per_table.total += 1
            per_table.by_status[status] = per_table.by_status.get(status, 0) + 1
            if status in WAITING:
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


def render_show(letter: DeadLetter) -> str:
    d = letter.to_dict()
    history = d.pop("history")
    width = max(len(k) for k in d)
    lines = [f"{k.ljust(width)}  {json.dumps(v) if isinstance(v, dict) else ('' if v is None else v)}"
             for k, v in d.items()]
    lines.append("history:")
    for entry in history:
        at = entry.pop("at")
        detail = ", ".join(f"{k}={v}" for k, v in sorted(entry.items()) if k != "status")
        lines.append(f"  {at}  {entry.get('status', '?'):<10}  {detail}")
    if not history:
        lines.append("  (none recorded: written by a relay older than the history column)")
    return "\n".join(lines)


def render_candidates(letters: Sequence[DeadLetter], verb: str) -> str:
    rows = [[d.cdc_at.strftime("%Y-%m-%d %H:%M:%S.%f"), d.status or "", d.error_class or "", str(d.attempts or 0),
             d.event_id or "", d.aggregate_id or "", d.event_type or "", d.topic or ""] for d in letters]
    lines = _columns(["CDC TIME (UTC)", "STATUS", "ERROR", "ATTEMPTS", "EVENT ID", "AGGREGATE ID", "EVENT TYPE",
                      "TOPIC"], rows, right=(3,)) if rows else []
    return "\n".join([*lines, f"dry run: {len(letters)} dead letter(s) would be {verb}; nothing was changed"])


# --------------------------------------------------------------------------- CLI

def register(sub, common) -> None:
    p = sub.add_parser("dlq", parents=[common], help="inspect and act on dead letters (list, stats, show, replay, "
                       "discard)", description="Inspect the dead-letter table, replay or discard dead letters.")
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
    sh = action.add_parser("show", parents=[common], help="every stored field of one dead letter, and its history")
    sh.add_argument("event_id", metavar="EVENT_ID")
    _scope_arguments(sh)
    sh.add_argument("--json", action="store_true", help="print JSON")
    sh.set_defaults(func=_show)
    rp = action.add_parser("replay", parents=[common], help="publish dead letters again, in cdc$time order",
                           description="Publish the stored records of dead letters again (with a relay_dlq_attempt "
                           "header), in cdc$time order per aggregate; each is marked replayed once Kafka "
                           "acknowledged it. Exit 0: all replayed; 1: some failed; 2: user error.")
    _filter_arguments(rp)
    rp.add_argument("--status", choices=OPEN_STATUSES, action="append", default=None,
                    help="only this status (repeatable; default: pending and parked)")
    rp.add_argument("--limit", type=int, default=0, help="at most this many, the oldest first (default: all)")
    rp.add_argument("--rate", type=float, default=None, help="at most this many records per second")
    rp.add_argument("--dry-run", action="store_true", help="list what would be published; publish nothing")
    rp.add_argument("--json", action="store_true", help="print JSON")
    rp.set_defaults(func=_replay)
    dc = action.add_parser("discard", parents=[common], help="mark dead letters discarded (kept for audit)")
    _filter_arguments(dc)
    dc.add_argument("--status", choices=OPEN_STATUSES, action="append", default=None,
                    help="only this status (repeatable; default: pending and parked)")
    dc.add_argument("--limit", type=int, default=0, help="at most this many, the oldest first (default: all)")
    dc.add_argument("--reason", required=True, help="why (kept with the dead letter)")
    dc.add_argument("--dry-run", action="store_true", help="list what would be discarded; change nothing")
    dc.add_argument("--json", action="store_true", help="print JSON")
    dc.set_defaults(func=_discard)


def _scope_arguments(p) -> None:
    p.add_argument("--table", default=None, help="one table (keyspace.table); default: every configured table")
    p.add_argument("--days", type=int, default=7, help="look back this many days, today included (default 7)")


def _filter_arguments(p) -> None:
    p.add_argument("--table", required=True, help="the source table (keyspace.table)")
    p.add_argument("--since", default=None, help="events with cdc$time at or after this: seconds ago, or an ISO "
                   "time (default: --days back)")
    p.add_argument("--until", default=None, help="events with cdc$time before this: seconds ago, or an ISO time")
    p.add_argument("--aggregate-id", default=None, help="only this aggregate")
    p.add_argument("--event-type", default=None, help="only this event type")
    p.add_argument("--error-class", default=None, help="only this error class (e.g. MSG_SIZE_TOO_LARGE)")
    p.add_argument("--days", type=int, default=7, help="without --since: look back this many days (default 7)")


def parse_when(value: str, flag: str, now: datetime | None = None) -> int:
    """`--since`/`--until`: seconds ago (`300`, `1.5`) or an ISO time (UTC when it has no zone), as µs."""
    now = now or datetime.now(UTC)
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            raise UserError(f"{flag} {value!r}: expected seconds ago or an ISO time (2025-01-31T12:00:00Z)") from None
        return int((when if when.tzinfo else when.replace(tzinfo=UTC)).timestamp() * 1_000_000)
    if seconds < 0:
        raise UserError(f"{flag} {value!r}: seconds ago must be >= 0")
    return int((now - timedelta(seconds=seconds)).timestamp() * 1_000_000)


def selection(args):
    from relay.dlqreplay import Selection

    if args.days < 1:
        raise UserError("--days must be at least 1")
    if args.limit < 0:
        raise UserError("--limit must be >= 0 (0 = all)")
    if "." not in args.table:
        raise UserError(f"--table {args.table!r}: expected keyspace.table")
    now = datetime.now(UTC)
    since = parse_when(args.since, "--since", now) if args.since else None
    until = parse_when(args.until, "--until", now) if args.until else None
    if since is not None and until is not None and until <= since:
        raise UserError("--until must be later than --since")
    return Selection(args.table, frozenset(args.status or ("pending", "parked")), since, until, args.aggregate_id,
                     args.event_type, args.error_class, args.limit or None)


def _open(args):
    from relay import config, connect

    cfg = config.load(args.config)
    if args.days < 1:
        raise UserError("--days must be at least 1")
    tables = tables_for(cfg, args.table)
    session = connect.cql_session(cfg)
    try:
        require_relay_tables(session, cfg.scylla.relay_keyspace)
    except UserError:
        session.cluster.shutdown()
        raise
    return cfg, tables, session


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


def _show(args) -> int:
    from relay.dlqstore import read_letters

    cfg, tables, session = _open(args)
    try:
        found = [d for d in read_letters(session, cfg.scylla.relay_keyspace, tables,
                                         recent_days(args.days, datetime.now(UTC).date()))
                 if d.event_id == args.event_id]
    finally:
        session.cluster.shutdown()
    if not found:
        raise UserError(f"no dead letter with event id {args.event_id!r} in {', '.join(tables)} over the last "
                        f"{args.days} day(s) (try --days)")
    if args.json:
        print(json.dumps([d.to_dict() for d in found] if len(found) > 1 else found[0].to_dict(), indent=2))
    else:
        print("\n\n".join(render_show(d) for d in found))
    return 0


def _act(args, verb: str) -> int:
    from relay import config, connect
    from relay.dlqreplay import Replayer
    from relay.dlqstore import default_actor
    from relay.progress import Progress

    sel = selection(args)
    rate = getattr(args, "rate", None)
    if rate is not None and rate <= 0:
        raise UserError("--rate must be > 0 (records per second)")
    cfg = config.load(args.config)
    session = connect.cql_session(cfg)
    try:
        require_relay_tables(session, cfg.scylla.relay_keyspace)
        replayer = Replayer(cfg, session, default_actor(), days=args.days, rate=rate)
        if args.dry_run:
            todo = replayer.select(sel).todo
            if args.json:
                print(json.dumps({"dry_run": True, "matched": len(todo), "dead_letters": [d.to_dict() for d in todo]},
                                 indent=2))
            else:
                print(render_candidates(todo, verb))
            return 0
        progress = Progress(None, label=f"dlq {'replay' if verb == 'published' else 'discard'}",
                            unit="dead letters")
        replayer.on_progress = progress.update
        replayer.on_plan = lambda n: setattr(progress, "total", n)
        try:
            summary = replayer.replay(sel) if verb == "published" else replayer.discard(sel, args.reason)
        finally:
            progress.close()
    finally:
        session.cluster.shutdown()
    print(json.dumps(summary.to_dict(), indent=2) if args.json else summary.line())
    return 0 if summary.complete else 1


def _replay(args) -> int:
    return _act(args, "published")


def _discard(args) -> int:
    return _act(args, "discarded")
