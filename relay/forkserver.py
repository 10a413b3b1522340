"""Where worker processes come from: forked from a copy of the supervisor made before it started
any thread, so a worker starts with the libraries already imported.

A spawned worker is a fresh interpreter: it imports the CQL driver, confluent-kafka,
prometheus-client and the rest again, about 0.5 s of CPU per worker (per restart too), which the
supervisor had already paid. multiprocessing's "forkserver" start method forks workers from a
server process, with everything `spawn` gives them (pickled arguments, pipes passed as fds, exit
codes, a sentinel of the parent); but it starts that server as a fresh interpreter, which pays
the imports once more. Here the server is instead a fork of the supervisor, made while it has
one thread and no client (nothing to inherit in a broken state: no lock held by another
thread, no socket, no librdkafka instance); it then imports the worker's own modules, once.

The forkserver is multiprocessing's, and so is its state (a module-level singleton of the
standard library): `_fork_server` fills it in as `ForkServer.ensure_running` would. Should the server die,
multiprocessing starts a fresh one the usual way; workers it forked notice that their parent
changed and exit, as the supervisor reads them as dead.

A process with other threads already running (a test calling the supervisor in-process, say)
gets the `spawn` context: forking it could copy a lock held mid-operation.
"""
from __future__ import annotations

import logging
import multiprocessing as mp
import os
import signal
import socket
import threading
from collections.abc import Sequence
from multiprocessing import connection, forkserver, resource_tracker, util
from multiprocessing.context import BaseContext

log = logging.getLogger(__name__)

SERVER_NAME = "relay-forksrv"


def name_process(name: str) -> None:
    """The name `ps -o comm`, `top` and /proc/PID/comm show (Linux, at most 15 bytes): a forked
    process keeps its parent's command line, so this is what tells a worker from the supervisor."""
    try:
        with open("/proc/self/comm", "w") as fh:
            fh.write(name[:15])
    except OSError:
        pass


def worker_context(preload: Sequence[str] = ()) -> BaseContext:
    """The multiprocessing context to start workers with; `preload`: modules only workers need,
    imported once, in the forkserver, after the fork."""
    if threading.active_count() > 1 or not _understood():
        return mp.get_context("spawn")
    server = forkserver._forkserver
    with server._lock:
        if server._forkserver_pid is None:
            _fork_server(server, list(preload))
    return mp.get_context("forkserver")


def _understood() -> bool:
    """The standard library's forkserver has the shape this module fills in (checked on CPython
    3.11, Linux); anything else gets `spawn`, never a half-initialized server."""
    import inspect

    if not hasattr(os, "fork") or "forkserver" not in mp.get_all_start_methods():
        return False
    server = getattr(forkserver, "_forkserver", None)
    fields = ("_lock", "_forkserver_pid", "_forkserver_address", "_forkserver_alive_fd")
    if server is None or not all(hasattr(server, f) for f in fields) or getattr(server, "_forkserver_authkey", None):
        return False
    params = list(inspect.signature(forkserver.main).parameters)
    return params[:3] == ["listener_fd", "alive_r", "preload"]


def _fork_server(server, preload: list[str]) -> None:
    resource_tracker.ensure_running()  # a spawned helper; its fd is handed to every worker
    with socket.socket(socket.AF_UNIX) as listener:
        address = connection.arbitrary_address("AF_UNIX")
        listener.bind(address)
        if not util.is_abstract_socket_namespace(address):
            os.chmod(address, 0o600)
        listener.listen()
        # Every client holds the write end; the server exits once all of them are gone.
        alive_r, alive_w = os.pipe()
        pid = os.fork()
        if pid == 0:
            code = 0
            try:
                os.close(alive_w)
                # The server lives until its clients do: a signal to the whole process group (a
                # graceful SIGTERM, a Ctrl-C) is for the supervisor and the workers to act on. Workers
                # set their own handlers when they start.
                signal.signal(signal.SIGTERM, signal.SIG_IGN)
                signal.signal(signal.SIGINT, signal.SIG_IGN)
                name_process(SERVER_NAME)
                forkserver.main(listener.fileno(), alive_r, preload)
            except SystemExit as exc:  # main() ends this way when its clients have gone
                code = exc.code if isinstance(exc.code, int) else 0
            except BaseException:  # noqa: BLE001 - never return into the supervisor's code
                code = 1
            finally:
                os._exit(code)
        os.close(alive_r)
    server._forkserver_address = address
    server._forkserver_alive_fd = alive_w
    server._forkserver_pid = pid
    log.debug("forkserver started (pid %d)", pid)


def stop(timeout: float = 10.0) -> None:
    """Let the forkserver go (it exits once the last worker has) and reap it: its CPU, which includes
    that of the workers it reaped, is then counted in this process's children's usage."""
    import time

    server = forkserver._forkserver
    with server._lock:
        pid, fd = server._forkserver_pid, server._forkserver_alive_fd
        if pid is None:
            return
        server._forkserver_pid = server._forkserver_alive_fd = server._forkserver_address = None
    if fd is not None:
        os.close(fd)
    deadline = time.monotonic() + timeout
    while True:
        try:
            done, _ = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            return
        if done:
            return
        if time.monotonic() >= deadline:
            log.warning("forkserver (pid %d) still running after %.0fs; leaving it", pid, timeout)
            return
        time.sleep(0.02)
