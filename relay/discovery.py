"""Discovery: CDC generations (vnodes) and stream sets (tablets) of each table, cut into tasks.

Vnodes (SCYLLA_CDC.md §2.2): generation timestamps come from `cdc_generation_timestamps`;
a generation's streams are read from `cdc_streams_descriptions_v2` only after its timestamp
is visible (Scylla writes the streams first). Tablets (§3.2): each table has its own stream
sets in `cdc_timestamps` / `cdc_streams` (stream_state 0 = the set operating from then).
A generation operates over [start, next start). Tasks: one per vnode index (its streams read
with one IN query); one per stream for tablets.
"""
from __future__ import annotations

import logging
from datetime import UTC, datetime

from relay.config import Config, TableConfig
from relay.model import Generation, Task
from relay.streams import stream_token, vnode_index

log = logging.getLogger(__name__)

UNVERSIONED_TASK_BASE = 1 << 22  # task ids for pre-versioning stream ids, one task each


def micros(ts: datetime) -> int:
    if ts.tzinfo is None:
        ts = ts.replace(tzinfo=UTC)
    return round(ts.timestamp() * 1000) * 1000


def as_datetime(us: int) -> datetime:
    return datetime.fromtimestamp(us / 1_000_000, tz=UTC)


def tasks_of(gen: Generation) -> list[Task]:
    """Cut a generation into tasks: streams grouped by vnode index, or one task per tablet stream."""
    if gen.tablets:
        ordered = sorted(gen.streams, key=stream_token)
        return [Task(gen.table, gen.start_us, i, (s,), gen.end_us) for i, s in enumerate(ordered)]
    groups: dict[int, list[bytes]] = {}
    loose = 0
    for s in sorted(gen.streams):
        idx = vnode_index(s)
        if idx is None:  # ids made before versioning carry no vnode index
            idx = UNVERSIONED_TASK_BASE + loose
            loose += 1
        groups.setdefault(idx, []).append(s)
    return [Task(gen.table, gen.start_us, i, tuple(groups[i]), gen.end_us) for i in sorted(groups)]


class Discovery:
    """Reads generation metadata through the real driver. Stream sets are immutable once
    published, so each is fetched once and cached; only the timestamp lists are re-polled."""

    def __init__(self, session, cfg: Config) -> None:
        self.session = session
        self.cfg = cfg
        self._vnode_streams: dict[datetime, tuple[bytes, ...]] = {}
        self._tablet_streams: dict[tuple[str, datetime], tuple[bytes, ...]] = {}
        self._mode: dict[str, bool] = {}
        ks = cfg.scylla.cdc_metadata_keyspace
        tks = cfg.scylla.tablets_metadata_keyspace
        self._q_gen_times = f"SELECT time FROM {ks}.cdc_generation_timestamps WHERE key = 'timestamps'"
        self._q_gen_streams = f"SELECT range_end, streams FROM {ks}.cdc_streams_descriptions_v2 WHERE time = %s"
        self._q_tab_times = f"SELECT timestamp FROM {tks}.cdc_timestamps WHERE keyspace_name = %s AND table_name = %s"
        self._q_tab_streams = (f"SELECT stream_id FROM {tks}.cdc_streams WHERE keyspace_name = %s AND "
                               f"table_name = %s AND timestamp = %s AND stream_state = 0")

    def uses_tablets(self, table: TableConfig) -> bool:
        """Scylla says so in system_schema.scylla_keyspaces; elsewhere (and as a fallback) a
        table with rows in the tablets stream tables is a tablets table."""
        if table.name in self._mode:
            return self._mode[table.name]
        tablets = None
        try:
            row = self.session.execute("SELECT initial_tablets FROM system_schema.scylla_keyspaces "
                                       "WHERE keyspace_name = %s", (table.keyspace,)).one()
            tablets = row is not None and row[0] is not None
        except Exception:  # noqa: BLE001 - not Scylla (or an old one): the table does not exist
            tablets = None
        if not tablets:
            try:
                rows = self.session.execute(self._q_tab_times + " LIMIT 1", (table.keyspace, table.table))
                tablets = rows.one() is not None
            except Exception:  # noqa: BLE001 - no tablets metadata tables at all
                tablets = False
        self._mode[table.name] = bool(tablets)
        return bool(tablets)

    def generations(self, table: TableConfig) -> list[Generation]:
        """Every generation of the table, oldest first, each with its end once the next is known."""
        if self.uses_tablets(table):
            times = sorted(r[0] for r in self.session.execute(self._q_tab_times, (table.keyspace, table.table)))
            sets = [self._tablet_set(table, t) for t in times]
            tablets = True
        else:
            times = sorted(r[0] for r in self.session.execute(self._q_gen_times))
            sets = [self._vnode_set(t) for t in times]
            tablets = False
        gens = []
        for i, (t, streams) in enumerate(zip(times, sets, strict=True)):
            end = micros(times[i + 1]) if i + 1 < len(times) else None
            if not streams:
                log.warning("%s: generation %s has no streams (truncated metadata?); skipped", table.name, t)
                continue
            gens.append(Generation(table.name, micros(t), end, streams, tablets))
        return gens

    def _vnode_set(self, t: datetime) -> tuple[bytes, ...]:
        if t not in self._vnode_streams:
            streams: list[bytes] = []
            for _range_end, group in self.session.execute(self._q_gen_streams, (t,)):
                streams.extend(group or ())
            self._vnode_streams[t] = tuple(sorted(streams))
        return self._vnode_streams[t]

    def _tablet_set(self, table: TableConfig, t: datetime) -> tuple[bytes, ...]:
        key = (table.name, t)
        if key not in self._tablet_streams:
            rows = self.session.execute(self._q_tab_streams, (table.keyspace, table.table, t))
            self._tablet_streams[key] = tuple(sorted((r[0] for r in rows), key=stream_token))
        return self._tablet_streams[key]
