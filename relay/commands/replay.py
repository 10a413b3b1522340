"""`relay replay`: publish a time range of a table's CDC log again, for projection rebuilds
(DESIGN §4b, relay.cdcreplay). Exit 0: everything matched was published; 1: some failed; 2: user error."""
from __future__ import annotations

import json
from datetime import UTC, datetime


def register(sub, common) -> None:
    p = sub.add_parser("replay", parents=[common], help="re-publish events from the CDC log (projection rebuilds)",
                       description="Publish the events of a time range again, read from the table's CDC log (only "
                       "what its TTL kept). Records carry relay_replay = the run id; dedup is bypassed on purpose, "
                       "but one run never publishes a row twice.")
    p.add_argument("--table", required=True, help="a configured table (keyspace.table)")
    p.add_argument("--since", required=True, help="cdc$time at or after this: seconds ago, or an ISO time")
    p.add_argument("--until", required=True, help="cdc$time before this: seconds ago, or an ISO time")
    p.add_argument("--aggregate-id", default=None, help="only this aggregate")
    p.add_argument("--event-type", default=None, help="only this event type")
    p.add_argument("--topic", default=None, help="publish to this topic template instead of the table's")
    p.add_argument("--rate", type=float, default=None, help="at most this many records per second")
    p.add_argument("--dry-run", action="store_true", help="list what would be published; publish nothing")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=_replay)


def _replay(args) -> int:
    import re
    import sys

    from relay import config, connect
    from relay.cdcreplay import LogReplayer, LogSelection
    from relay.commands.dlq import parse_when
    from relay.config import ColumnsConfig
    from relay.discovery import Discovery
    from relay.errors import UserError
    from relay.progress import Progress

    now = datetime.now(UTC)
    since, until = parse_when(args.since, "--since", now), parse_when(args.until, "--until", now)
    if until <= since:
        raise UserError("--until must be later than --since")
    if args.rate is not None and args.rate <= 0:
        raise UserError("--rate must be > 0 (records per second)")
    cfg = config.load(args.config)
    table = cfg.table(args.table)
    if args.topic is not None:
        aliases = {f for f in ColumnsConfig.__dataclass_fields__ if f != "headers"}
        bad = [f for f in re.findall(r"{([^{}]*)}", args.topic) if f not in aliases]
        if not args.topic or bad:
            raise UserError(f"--topic {args.topic!r}: unknown placeholder(s) {bad}; use {', '.join(sorted(aliases))}")
    session = connect.cql_session(cfg)
    try:
        ttl = Discovery(session, cfg).cdc_ttl_seconds(table)
        if ttl and since < (now.timestamp() - ttl) * 1_000_000:
            print(f"relay: warning: {table.name} keeps its CDC log {ttl}s: rows older than that are gone and not "
                  f"replayed", file=sys.stderr)
        progress = Progress(None, label="replay", unit="events")
        replayer = LogReplayer(cfg, session, rate=args.rate, dry_run=args.dry_run, on_progress=progress.update)
        try:
            summary = replayer.run(LogSelection(table.name, since, until, args.aggregate_id, args.event_type,
                                                args.topic))
        finally:
            progress.close()
    finally:
        session.cluster.shutdown()
    if args.json:
        print(json.dumps({"dry_run": args.dry_run, **summary.to_dict()}, indent=2))
    else:
        if args.dry_run:
            for e in summary.events[:20]:
                print(f"{datetime.fromtimestamp(e['cdc_time_us'] / 1e6, tz=UTC).isoformat()}  {e['event_id']}  "
                      f"{e['aggregate_id']}  {e['event_type']}  -> {e['topic']}")
            more = " (the first 20 shown; --json lists all)" if len(summary.events) > 20 else ""
            print(f"dry run: {summary.matched} event(s) would be published{more}; nothing was published")
        else:
            print(summary.line())
    return 0 if summary.complete else 1
