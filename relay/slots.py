"""Tasks → lease slots (DESIGN §5b): a stable hash of what a task reads, not of its generation.

A slot is a partition of the coordination topic; the replica the group coordinator assigns the
partition to runs every task of the slot. The hash must be the same in every process, Python run
and relay version (Python's hash() of a str is salted per process), and must not involve the
generation: a vnode's task of generation G+1 lands in the slot of its task of G, so a generation
switch moves no work between replicas while the ring keeps its shape.

Identity: a vnode task is (table, vnode index) — Scylla numbers a generation's vnode ranges by
their end token, so the same range keeps its index while the ring is unchanged; a tablets task is
(table, its stream id), which stays until its tablet splits or merges.
"""
from __future__ import annotations

import hashlib
from collections.abc import Iterable

from relay.model import Task


def task_identity(task: Task, tablets: bool) -> bytes:
    if tablets:
        return b"t|" + task.table.encode() + b"|" + (task.streams[0] if task.streams else b"")
    return b"v|" + task.table.encode() + b"|%d" % task.task_id


def slot_of_identity(identity: bytes, slots: int) -> int:
    digest = hashlib.blake2b(identity, digest_size=8).digest()
    return int.from_bytes(digest, "big") % slots


def slot_of(task: Task, slots: int, tablets: bool) -> int:
    return slot_of_identity(task_identity(task, tablets), slots)


class SlotMap:
    """slot_of for the supervisor: a task's slot computed once (the loop asks often)."""

    def __init__(self, slots: int) -> None:
        self.slots = slots
        self._cache: dict[tuple, int] = {}

    def of(self, task: Task, tablets: bool) -> int:
        slot = self._cache.get(task.key)
        if slot is None:
            slot = self._cache[task.key] = slot_of(task, self.slots, tablets)
        return slot

    def known(self, key: tuple) -> int | None:
        """The slot of a task seen before (held tasks are always known: they came from a plan)."""
        return self._cache.get(key)

    def slots_of(self, keys: Iterable[tuple]) -> set[int]:
        return {s for s in (self._cache.get(k) for k in keys) if s is not None}
