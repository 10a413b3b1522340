"""The stack lock that keeps `outage` and `serial` tests alone even under a plain `pytest -n auto`:
shared holders coexist, an exclusive one excludes them, and a waiting exclusive one lets no new
shared holder in (no starvation). Lock states are observed with non-blocking attempts, never timed."""
from __future__ import annotations

import fcntl
import os
import threading

import pytest
from conftest import STACK_LOCK
from harness import wait_for
from serial_lock import acquire, turnstile_of


def test_shared_holders_coexist_and_exclude_an_exclusive_one(tmp_path):
    lock = tmp_path / "stack.lock"
    first = acquire(lock, exclusive=False)
    second = acquire(lock, exclusive=False, blocking=False)
    assert second is not None, "two shared holders at once"
    assert acquire(lock, exclusive=True, blocking=False) is None, "exclusive while shared holders are in"
    first.release()
    second.release()
    alone = acquire(lock, exclusive=True, blocking=False)
    assert alone is not None, "exclusive once they left"
    assert acquire(lock, exclusive=False, blocking=False) is None, "shared while an exclusive holder is in"
    alone.release()


def gate_taken(lock) -> bool:
    """True while someone holds the turnstile exclusively (an exclusive holder waiting)."""
    fd = os.open(turnstile_of(lock), os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return False
    except BlockingIOError:
        return True
    finally:
        os.close(fd)


def test_a_waiting_exclusive_holder_lets_no_new_shared_one_in(tmp_path):
    lock = tmp_path / "stack.lock"
    reader = acquire(lock, exclusive=False)
    got: list = []
    waiter = threading.Thread(target=lambda: got.append(acquire(lock, exclusive=True)), daemon=True)
    waiter.start()
    wait_for(lambda: gate_taken(lock), 30, "the exclusive taker to wait at the turnstile")
    assert acquire(lock, exclusive=False, blocking=False) is None, "a shared taker overtook a waiting exclusive one"
    reader.release()
    waiter.join(30)
    assert got and got[0] is not None and got[0].exclusive
    got[0].release()
    assert acquire(lock, exclusive=False, blocking=False) is not None


def test_an_ordinary_test_shares_the_stack_lock(stack_lock):
    assert stack_lock is not None and not stack_lock.exclusive
    assert acquire(STACK_LOCK, exclusive=True, blocking=False) is None


@pytest.mark.serial
def test_a_serial_test_holds_the_stack_lock_alone(stack_lock):
    assert stack_lock.exclusive
    assert acquire(STACK_LOCK, exclusive=False, blocking=False) is None
