"""The supervisor's side of one worker's control pipe: messages go out from a thread of their own.

A worker busy in a long window does not read its pipe; a pipe full of a large assignment would
then block whoever writes to it. The supervisor's loop only hands messages to a `Sender` and
goes on. Only the newest assignment matters (each one carries the worker's whole task set), so a
newer one replaces one that has not gone out yet; Stop goes after it. A lease deadline likewise:
only the newest matters, and it goes before an assignment (a fence must not wait behind one).
"""
from __future__ import annotations

import logging
import threading
from multiprocessing.connection import Connection

from relay.messages import Assign, Lease, Stop

log = logging.getLogger("relay.supervisor")


class Sender:
    def __init__(self, conn: Connection, name: str) -> None:
        self._conn = conn
        self._cond = threading.Condition()
        self._assign: Assign | None = None  # the newest assignment not yet written
        self._lease: Lease | None = None  # the newest lease deadline not yet written
        self._stop = False  # a Stop waits to be written
        self._closed = False
        self._writing = False
        self.broken = False  # the pipe refused a write: the worker is gone
        self.sent = 0  # messages written
        self.replaced = 0  # assignments replaced by a newer one before they went out
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def assign(self, msg: Assign) -> None:
        with self._cond:
            if self._assign is not None:
                self.replaced += 1
            self._assign = msg
            self._cond.notify()

    def lease(self, msg: Lease) -> None:
        with self._cond:
            self._lease = msg
            self._cond.notify()

    def stop(self) -> None:
        with self._cond:
            self._stop = True
            self._cond.notify()

    def close(self, timeout: float = 2.0) -> bool:
        """Stop the thread; True once it has ended (a write in progress to a live, silent worker
        could hold it: the caller then must not close the pipe under it)."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def flush(self, timeout: float) -> bool:
        """Wait until nothing waits to be written (tests and benchmarks); True if so."""
        with self._cond:
            return self._cond.wait_for(
                lambda: self.broken or self._closed or (self._assign is None and self._lease is None and not self._stop
                                                        and not self._writing),
                timeout)

    def _run(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._closed or self._assign is not None or self._stop
                                    or self._lease is not None)
                if self._closed:
                    return
                if self._lease is not None:
                    msg, self._lease = self._lease, None
                elif self._assign is not None:
                    msg, self._assign = self._assign, None
                else:
                    msg, self._stop = Stop(), False
                self._writing = True
            try:
                self._conn.send(msg)  # may block while the worker is busy: only this thread waits
            except (OSError, ValueError) as exc:  # broken pipe, or closed under us at shutdown
                log.debug("control pipe %s: %s", self._thread.name, exc)
                with self._cond:
                    self.broken = True
                    self._writing = False
                    self._cond.notify_all()
                return
            with self._cond:
                self.sent += 1
                self._writing = False
                self._cond.notify_all()
