"""Run as a script by tests/test_forkserver.py: a process that starts workers the way `relay run`
does (relay.forkserver) and prints what they saw, one JSON line each."""
from __future__ import annotations

import json
import os
import sys
import time


def report(conn) -> None:
    import multiprocessing as mp

    conn.send({"pid": os.getpid(), "ppid": os.getppid(), "parent": mp.parent_process().pid,
               "preloaded": "relay.dedup" in sys.modules, "inherited": "relay.mapping" in sys.modules})


def burn(seconds: float) -> None:
    end = time.process_time() + seconds
    while time.process_time() < end:
        pass
    sys.exit(7)


def until_orphaned(flag: str) -> None:
    import multiprocessing as mp
    from types import SimpleNamespace

    from relay.worker import Worker

    # Worker.orphaned itself, on the two facts it reads (a whole Worker needs the services).
    facts = SimpleNamespace(parent=os.getppid(), supervisor=mp.parent_process())
    while not Worker.orphaned(facts):
        time.sleep(0.05)
    with open(flag, "w") as fh:
        fh.write(str(os.getpid()))


def main() -> None:
    import multiprocessing as mp
    import resource

    import relay.mapping  # noqa: F401 - imported before the fork: workers must not import it again
    from relay import forkserver

    mode = sys.argv[1]
    ctx = forkserver.worker_context(["relay.dedup"])
    out = {"method": ctx.get_start_method(), "server": mp.forkserver._forkserver._forkserver_pid}
    if mode == "report":
        parent, child = ctx.Pipe()
        p = ctx.Process(target=report, args=(child,))
        p.start()
        out.update(parent.recv(), me=os.getpid())
        p.join(10)
        out["exitcode"] = p.exitcode
    elif mode == "burn":
        p = ctx.Process(target=burn, args=(0.4,))
        p.start()
        p.join(30)
        forkserver.stop()
        ru = resource.getrusage(resource.RUSAGE_CHILDREN)
        out.update(exitcode=p.exitcode, children_cpu_s=ru.ru_utime + ru.ru_stime)
        try:
            os.waitpid(out["server"], os.WNOHANG)
            out["server_reaped"] = False
        except ChildProcessError:
            out["server_reaped"] = True
    elif mode == "orphan":
        p = ctx.Process(target=until_orphaned, args=(sys.argv[2],))
        p.start()
        out["worker"] = p.pid
        print(json.dumps(out), flush=True)
        time.sleep(600)  # killed by the test
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
