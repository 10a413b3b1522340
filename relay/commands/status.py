"""`relay status [--json]`: generations, tasks, owners, checkpoints and lag per table, DLQ counts,
and the leases group: its members, the slots of each, and the replica each task's slot is with now.

Read from Scylla (checkpoints, generation metadata) and Kafka's group coordinator (DESIGN §5b), so it
works whether or not relay runs."""
from __future__ import annotations

import json
import time

from relay.errors import UserError


def register(sub, common) -> None:
    p = sub.add_parser("status", parents=[common], help="tasks, owners, checkpoints, lag and dead letters")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--tasks", action="store_true", help="list every task of the current generations")
    p.set_defaults(func=_status)


def collect(cfg, session) -> dict:
    from relay.checkpoints import CheckpointStore
    from relay.deadletters import count_pending
    from relay.discovery import Discovery, tasks_of
    from relay.leases import describe_group
    from relay.slots import slot_of

    discovery = Discovery(session, cfg)
    store = CheckpointStore(session, cfg.scylla.relay_keyspace, cfg.replica_id)
    now_us = int(time.time() * 1e6)
    try:
        leases = describe_group(cfg)
    except Exception as exc:  # noqa: BLE001 - Kafka down: the rest of the status still helps
        leases = {"group_id": cfg.leases_group_id, "error": str(exc).splitlines()[0][:200], "members": {}}
    replica_of = {s: r for r, slots in leases["members"].items() for s in slots}
    out: dict = {"leases": leases, "tables": {}}
    for t in cfg.tables:
        gens = discovery.generations(t)
        info: dict = {"mode": "tablets" if discovery.uses_tablets(t) else "vnodes", "generations": []}
        for g in gens:
            tasks = tasks_of(g)
            cps = {tid: (pos, owner, updated) for tid, pos, owner, updated in store.load_full(t.name, g.start_us)}
            goal = g.end_us
            done = goal is not None and all(cps.get(x.task_id, (0,))[0] >= goal for x in tasks)
            positions = [cps[x.task_id][0] for x in tasks if x.task_id in cps]
            gen = {"start_us": g.start_us, "end_us": g.end_us, "streams": len(g.streams), "tasks": len(tasks),
                   "checkpointed": len(positions), "complete": done,
                   "lag_seconds": None if done or not positions or len(positions) < len(tasks)
                   else round(max(0.0, (now_us - min(positions)) / 1e6), 1),
                   "owners": sorted({cps[x.task_id][1] for x in tasks if x.task_id in cps and cps[x.task_id][1]}),
                   "task_list": [{"task_id": x.task_id, "streams": len(x.streams),
                                  "slot": slot_of(x, cfg.leases.slots, g.tablets),
                                  "replica": replica_of.get(slot_of(x, cfg.leases.slots, g.tablets)),
                                  "position_us": cps.get(x.task_id, (None,))[0],
                                  "owner": cps.get(x.task_id, (None, None))[1]} for x in tasks]}
            info["generations"].append(gen)
        info["dead_letters_pending"] = count_pending(session, cfg.scylla.relay_keyspace, t.name)
        out["tables"][t.name] = info
    return out


def _fmt_ts(us: int | None) -> str:
    if us is None:
        return "open"
    from datetime import UTC, datetime

    return datetime.fromtimestamp(us / 1e6, tz=UTC).strftime("%Y-%m-%d %H:%M:%S")


def _status(args) -> int:
    from relay import config, connect
    from relay.schema import require_relay_tables

    cfg = config.load(args.config)
    if not cfg.tables:
        raise UserError(f"{cfg.source}: tables: no [[tables]] configured")
    session = connect.cql_session(cfg)
    try:
        ks = cfg.scylla.relay_keyspace
        require_relay_tables(session, ks)
        try:
            data = collect(cfg, session)
        except Exception as exc:  # noqa: BLE001 - e.g. schema not applied: say so in one line
            raise UserError(f"cannot read relay state: {str(exc).splitlines()[0][:200]} "
                            f"(did you run `relay schema apply`?)") from None
    finally:
        session.cluster.shutdown()
    if args.json:
        print(json.dumps(data, indent=1))
        return 0
    lz = data["leases"]
    if lz.get("error"):
        print(f"leases group {lz['group_id']}: cannot describe it: {lz['error']}")
    else:
        per = ", ".join(f"{r}: {len(s)} slot(s)" for r, s in sorted(lz["members"].items())) or "no members"
        print(f"leases group {lz['group_id']} ({lz['state']}, topic {lz['topic']}, {lz['slots']} slots): {per}")
    for name, info in data["tables"].items():
        print(f"{name}  ({info['mode']}, {len(info['generations'])} generation(s), "
              f"{info['dead_letters_pending']} dead letter(s) pending)")
        for g in info["generations"]:
            state = "complete" if g["complete"] else (f"lag {g['lag_seconds']}s" if g["lag_seconds"] is not None
                                                      else f"{g['checkpointed']}/{g['tasks']} tasks started")
            print(f"  generation {_fmt_ts(g['start_us'])} → {_fmt_ts(g['end_us'])}: {g['streams']} streams, "
                  f"{g['tasks']} tasks, {state}; owners: {', '.join(g['owners']) or '-'}")
            if args.tasks and not g["complete"]:
                for task in g["task_list"]:
                    print(f"    task {task['task_id']:>7}  {task['streams']} stream(s)  slot {task['slot']:>4}  "
                          f"replica {task['replica'] or '-'}  "
                          f"position {_fmt_ts(task['position_us']) if task['position_us'] else '-'}  "
                          f"{task['owner'] or ''}")
    return 0
