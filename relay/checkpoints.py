"""Task checkpoints in Scylla (DESIGN §5): every event with cdc$time < position is done."""
from __future__ import annotations

import threading
from datetime import UTC, datetime

from relay import timeuuid
from relay.discovery import as_datetime
from relay.model import Task


def position_uuid(us: int):
    """The smallest timeuuid at `us`: compares like minTimeuuid() of that instant."""
    return timeuuid.from_micros(us, clock_seq=0, node=0)


BATCH_ROWS = 100  # rows per unlogged batch: well under Scylla's batch_size_warn_threshold (128 KiB)


class CheckpointStore:
    def __init__(self, session, keyspace: str, owner: str) -> None:
        self.session = session
        self.owner = owner
        self._save = session.prepare(
            f"UPDATE {keyspace}.checkpoints SET position = ?, owner = ?, updated_at = ? "
            f"WHERE source_table = ? AND generation = ? AND task_id = ?")
        self._load = session.prepare(
            f"SELECT task_id, position, owner, updated_at FROM {keyspace}.checkpoints "
            f"WHERE source_table = ? AND generation = ?")

    def save_many(self, rows: list[tuple[Task, int]]) -> None:
        """Positions of many tasks, awaited: see `start_save`."""
        self.start_save(rows).wait()

    def start_save(self, rows: list[tuple[Task, int]]) -> PendingSave:
        """Send the positions of many tasks: one unlogged batch per (table, generation) partition (all
        rows of a batch share it, so Scylla applies it on one replica set without a batch log), at
        most BATCH_ROWS rows each, all on the wire at once. The caller goes on with its work and asks
        `done()` later: a worker's loop must not stall a round trip under load for positions that
        are allowed to be seconds stale."""
        from cassandra.query import BatchStatement, BatchType

        by_part: dict[tuple[str, int], list[tuple[Task, int]]] = {}
        for task, position in rows:
            by_part.setdefault((task.table, task.generation_us), []).append((task, position))
        now = datetime.now(UTC)
        pending = PendingSave()
        for (table, gen), part in by_part.items():
            when = as_datetime(gen)
            for i in range(0, len(part), BATCH_ROWS):
                batch = BatchStatement(batch_type=BatchType.UNLOGGED)
                for task, position in part[i:i + BATCH_ROWS]:
                    batch.add(self._save, (position_uuid(position), self.owner, now, table, when, task.task_id))
                pending.add(self.session.execute_async(batch))
        return pending

    def load_full(self, table: str, generation_us: int) -> list[tuple[int, int, str, datetime]]:
        """(task id, position µs, owner, updated_at) for one generation of one table."""
        rows = self.session.execute(self._load, (table, as_datetime(generation_us)))
        return [(r[0], timeuuid.to_micros(r[1]), r[2], r[3]) for r in rows if r[1] is not None]

    def load(self, table: str, generation_us: int) -> dict[int, int]:
        """task id → position (µs) for one generation of one table."""
        return {task_id: position for task_id, position, _, _ in self.load_full(table, generation_us)}


class PendingSave:
    """The batches of one `start_save`. Answers arrive on the driver's I/O thread."""

    def __init__(self) -> None:
        self._futures: list = []
        self._answered = 0
        self._waited = False
        self._lock = threading.Lock()

    def add(self, future) -> None:
        self._futures.append(future)
        future.add_callbacks(self._answer, self._answer)

    def _answer(self, _result) -> None:
        with self._lock:
            self._answered += 1

    def done(self) -> bool:
        """Every batch answered: `wait` returns (or raises) at once."""
        return self._waited or self._answered == len(self._futures)

    def wait(self) -> None:
        """Until every batch is answered, so none is still on the wire when this raises the first error."""
        errors = []
        for f in self._futures:
            try:
                f.result()
            except Exception as exc:  # noqa: BLE001 - raised below, once the others are answered
                errors.append(exc)
        self._waited = True  # result() returns before the callbacks have run
        if errors:
            raise errors[0]
