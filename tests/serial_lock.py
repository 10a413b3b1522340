"""One lock file per local stack, shared by every pytest process that uses that stack (xdist workers,
other runs): tests that stop services hold it alone, every other test shares it. So `pytest -n auto`
never stops Kafka under a parallel test, whichever order xdist picks.

flock(2) has no fairness: shared holders come and go and an exclusive waiter could wait for ever.
A turnstile fixes that: the exclusive waiter holds it while it waits, and a shared taker passes
through it (shared, at once released) before it takes the main lock, so none enters behind a waiter.
Locks belong to open files, not processes: two opens in one process exclude each other too.
"""
from __future__ import annotations

import fcntl
import os
from dataclasses import dataclass
from pathlib import Path


@dataclass
class Held:
    fd: int
    exclusive: bool

    def release(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)  # closing the file drops its lock
            self.fd = -1


def _open(path: Path) -> int:
    return os.open(path, os.O_RDWR | os.O_CREAT, 0o666)


def _flock(fd: int, mode: int, blocking: bool) -> bool:
    try:
        fcntl.flock(fd, mode if blocking else mode | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False


def turnstile_of(path: Path) -> Path:
    return path.with_name(path.name + ".turnstile")


def acquire(path: Path, *, exclusive: bool, blocking: bool = True) -> Held | None:
    """The main lock, shared or exclusive, through the turnstile; None if not blocking and not free."""
    gate = _open(turnstile_of(path))
    main = _open(path)
    try:
        if exclusive:
            if not _flock(gate, fcntl.LOCK_EX, blocking):  # no new shared holder from here on
                return None
            if not _flock(main, fcntl.LOCK_EX, blocking):  # then wait out those already in
                return None
        else:
            if not _flock(gate, fcntl.LOCK_SH, blocking):  # behind any exclusive waiter
                return None
            fcntl.flock(gate, fcntl.LOCK_UN)
            if not _flock(main, fcntl.LOCK_SH, blocking):
                return None
        held, main = Held(main, exclusive), -1
        return held
    finally:
        os.close(gate)
        if main >= 0:
            os.close(main)
