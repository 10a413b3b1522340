"""relay.forkserver: workers forked from a copy of the supervisor (no services needed).

Each case runs tests/forkserver_probe.py as a process of its own: the forkserver is forked from
the process that asks for it, and must never be forked from pytest's."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from harness import process_alive, wait_for

from relay import forkserver

PROBE = Path(__file__).with_name("forkserver_probe.py")
REPO = PROBE.parent.parent


def _probe(*args: str, timeout: float = 60) -> dict:
    out = subprocess.run([sys.executable, str(PROBE), *args], capture_output=True, text=True, timeout=timeout,
                         cwd=REPO, env=dict(os.environ, PYTHONPATH=str(REPO)), check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_a_worker_is_forked_with_the_modules_already_imported():
    r = _probe("report")
    assert r["method"] == "forkserver" and r["exitcode"] == 0
    assert r["parent"] == r["me"], "multiprocessing's parent is the process that started the worker"
    assert r["ppid"] == r["server"] != r["me"], "the worker is the forkserver's child"
    assert r["inherited"], "a module the starter had imported before the fork is there without an import"
    assert r["preloaded"], "a preloaded module was imported by the forkserver, once, for every worker"


def test_exit_codes_arrive_and_the_workers_cpu_is_counted_once_the_server_is_reaped():
    r = _probe("burn")
    assert r["exitcode"] == 7
    assert r["server_reaped"]
    # The worker burnt 0.4 s; it reached this process's children's usage through the reaped server
    # (the benchmarks' CPU totals come from there).
    assert r["children_cpu_s"] >= 0.35, r


def test_a_worker_sees_its_supervisor_die_although_its_parent_is_the_server(tmp_path):
    flag = tmp_path / "orphaned"
    proc = subprocess.Popen([sys.executable, str(PROBE), "orphan", str(flag)], stdout=subprocess.PIPE, text=True,
                            cwd=REPO, env=dict(os.environ, PYTHONPATH=str(REPO)), start_new_session=True)
    try:
        r = json.loads(proc.stdout.readline())
        assert process_alive(r["worker"]) and process_alive(r["server"])
        time.sleep(0.5)
        assert not flag.exists(), "the supervisor is alive: the worker must not think otherwise"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
        wait_for(flag.exists, 10, "the worker to notice its supervisor is gone")
        assert int(flag.read_text()) == r["worker"]
        wait_for(lambda: not process_alive(r["worker"]), 10, "the worker to exit")
        wait_for(lambda: not process_alive(r["server"]), 10, "the forkserver to exit after its last worker")
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def test_a_process_with_other_threads_spawns_its_workers():
    stop = threading.Event()
    t = threading.Thread(target=stop.wait, daemon=True)
    t.start()
    try:
        assert forkserver.worker_context().get_start_method() == "spawn"
    finally:
        stop.set()
        t.join()
