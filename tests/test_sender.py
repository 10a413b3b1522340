"""`relay.sender.Sender`: the supervisor's writes to a worker's pipe never wait for the worker."""
from __future__ import annotations

import multiprocessing as mp

from relay.messages import Assign, Stop
from relay.model import Task
from relay.sender import Sender

GENERATION_US = 1_767_225_600_000_000


TASKS = tuple(Task("shop.outbox", GENERATION_US, i, tuple(bytes([i % 256]) * 16 for _ in range(8)))
              for i in range(3000))


def big_assign(seq: int, n: int = 3000) -> Assign:
    """Far more than a pipe's buffer (a few hundred KB): the write blocks until the worker reads."""
    return Assign(seq, TASKS[:n], {"shop.outbox": 86400})


def test_a_worker_that_never_reads_does_not_block_the_caller_and_only_the_newest_assignment_waits():
    parent, child = mp.get_context("spawn").Pipe()
    sender = Sender(parent, "test-sender")
    try:
        for seq in range(1, 11):
            sender.assign(big_assign(seq))  # returns at once: the thread is the one that waits
        sender.stop()
        assert not sender.flush(0.2), "the first assignment cannot have gone out: nobody reads"
        # Now the worker reads: the one in flight (if the thread took one before the newest came),
        # then only the newest, then Stop.
        received = [child.recv()]
        while not isinstance(received[-1], Stop):
            received.append(child.recv())
        assert sender.flush(30)
        seqs = [m.seq for m in received[:-1]]
        assert seqs[-1] == 10 and len(seqs) <= 2, seqs
        assert not child.poll(0)
        assert sender.sent == len(received) and sender.replaced == 10 - len(seqs)
    finally:
        sender.close()
        parent.close()
        child.close()


def test_a_closed_pipe_marks_the_sender_broken_and_ends_its_thread():
    parent, child = mp.get_context("spawn").Pipe()
    child.close()  # the worker is gone
    sender = Sender(parent, "test-sender")
    sender.assign(big_assign(1, n=10))
    assert sender.flush(30)
    assert sender.broken
    assert sender.close()
    parent.close()


def test_close_ends_an_idle_sender():
    parent, child = mp.get_context("spawn").Pipe()
    sender = Sender(parent, "test-sender")
    assert sender.close()
    sender.assign(big_assign(1, n=1))  # after close: kept, never written
    assert not child.poll(0)
    parent.close()
    child.close()
