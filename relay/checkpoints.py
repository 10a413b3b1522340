"""Task checkpoints in Scylla (DESIGN §5): every event with cdc$time < position is done."""
from __future__ import annotations

from datetime import UTC, datetime

from relay import timeuuid
from relay.discovery import as_datetime
from relay.model import Task


def position_uuid(us: int):
    """The smallest timeuuid at `us`: compares like minTimeuuid() of that instant."""
    return timeuuid.from_micros(us, clock_seq=0, node=0)


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

    def save(self, task: Task, position_us: int) -> None:
        self.session.execute(self._save, (position_uuid(position_us), self.owner, datetime.now(UTC), task.table,
                                          as_datetime(task.generation_us), task.task_id))

    def load_full(self, table: str, generation_us: int) -> list[tuple[int, int, str, datetime]]:
        """(task id, position µs, owner, updated_at) for one generation of one table."""
        rows = self.session.execute(self._load, (table, as_datetime(generation_us)))
        return [(r[0], timeuuid.to_micros(r[1]), r[2], r[3]) for r in rows if r[1] is not None]

    def load(self, table: str, generation_us: int) -> dict[int, int]:
        """task id → position (µs) for one generation of one table."""
        return {task_id: position for task_id, position, _, _ in self.load_full(table, generation_us)}
