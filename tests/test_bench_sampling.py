"""benchmarks.sampling's arithmetic on py-spy's raw format (no services; the smoke run samples a real drain)."""
from __future__ import annotations

from benchmarks.sampling import summarize

SUP = 'process 10:"python -m relay run --config r.toml"'
WORKER = 'process 11:"python -B -c from multiprocessing.spawn import spawn_main; spawn_main(tracker_fd=15)"'
WMAIN = "<module> (<string>:1);spawn_main (multiprocessing/spawn.py:122);worker_main (relay/worker.py:619)"
RUN = WMAIN + ";Worker.run (relay/worker.py:206);Worker._relay (relay/worker.py:505)"


def test_samples_become_microseconds_per_event_by_thread_stage_and_function(tmp_path):
    raw = tmp_path / "spy.raw"
    raw.write_text("\n".join([
        f"{SUP};{WORKER};{RUN};Publisher._publish (relay/publisher.py:236) 30",
        f"{SUP};{WORKER};{RUN};Publisher._publish (relay/publisher.py:218);"
        "_Window.callback (relay/publisher.py:120) 10",
        f"{SUP};{WORKER};{RUN};Mapper.map_pages (relay/mapping.py:106);Mapper._event (relay/mapping.py:159) 20",
        f"{SUP};{WORKER};{RUN};Dedup.split (relay/dedup.py:140);digest (relay/dedup.py:80) 5",
        f"{SUP};{WORKER};{WMAIN};Worker.boot (relay/worker.py:73);cql_session (relay/connect.py:134) 15",
        f"{SUP};{WORKER};Thread.run (threading.py:982);LibevLoop._run_loop (cassandra/io/libevreactor.py:101) 12",
        f"{SUP};_run_module_as_main (<frozen runpy>:198);main (relay/cli.py:55);"
        "Supervisor.run (relay/supervisor.py:219) 6",
        f"{SUP};Thread.run (threading.py:982);GroupMember._run (relay/leases.py:212) 2",
        "not a sample line",
    ]) + "\n")
    s = summarize(raw, events=1000, rate_hz=100)
    # one sample = 1/100 s = 10,000 µs, over 1,000 events = 10 µs/event
    assert s["samples"] == 100 and s["us_per_event"] == 1000.0
    threads = {r["name"]: r["us_per_event"] for r in s["threads"]}
    assert threads == {"worker: main thread": 800.0, "worker: driver I/O thread (row decoding)": 120.0,
                       "supervisor: main thread": 60.0, "supervisor: other threads (leases, driver, HTTP)": 20.0}
    stages = {r["name"]: r["us_per_event"] for r in s["worker_main_stages"]}
    assert stages == {"produce and wait for acks (librdkafka calls)": 300.0, "map rows to events": 200.0,
                      "start: imports, connections (before and in Worker.boot)": 150.0,
                      "delivery reports (callbacks)": 100.0, "dedup: check (Redis)": 50.0}
    own = {r["name"]: r["samples"] for r in s["own"]}
    assert own["Publisher._publish (relay/publisher.py)"] == 30  # line numbers merged into the function
    cumulative = {r["name"]: r["samples"] for r in s["relay_cumulative"]}
    assert cumulative["Publisher._publish (relay/publisher.py)"] == 40
    assert cumulative["worker_main (relay/worker.py)"] == 80
    assert all("relay/" in name for name in cumulative)


def test_forked_workers_are_told_from_the_supervisor_by_their_stacks(tmp_path):
    """relay.forkserver: a worker keeps relay's command line (no spawn_main in its process frame); its
    main thread's stacks run worker_main, and its other threads belong to it through its pid."""
    sup = 'process 10:"python -m relay run --config r.toml"'
    server = 'process 12:"python -m relay run --config r.toml"'
    worker = 'process 13:"python -m relay run --config r.toml"'
    fork = ("<module> (relay/__main__.py:4);main (relay/cli.py:55);_supervise (relay/commands/run.py:67);"
            "worker_context (relay/forkserver.py:50);main (multiprocessing/forkserver.py:260)")
    run = (fork + ";_serve_one (multiprocessing/forkserver.py:300);_main (multiprocessing/spawn.py:133);"
           "worker_main (relay/worker.py:640);Worker.run (relay/worker.py:206)")
    raw = tmp_path / "spy.raw"
    raw.write_text("\n".join([
        f"{sup};{server};{worker};{run};Mapper.map_pages (relay/mapping.py:106) 40",
        f"{sup};{server};{worker};Thread.run (threading.py:982);"
        "LibevLoop._run_loop (cassandra/io/libevreactor.py:101) 7",
        f"{sup};{server};{fork};_find_and_load (<frozen importlib._bootstrap>:1176) 3",
        f"{sup};<module> (relay/__main__.py:4);main (relay/cli.py:55);Supervisor.run (relay/supervisor.py:219) 6",
    ]) + "\n")
    s = summarize(raw, events=1000, rate_hz=100)
    threads = {r["name"]: r["samples"] for r in s["threads"]}
    assert threads == {"worker: main thread": 40, "worker: driver I/O thread (row decoding)": 7,
                       "forkserver: the workers' own imports (once)": 3, "supervisor: main thread": 6}
    cumulative = {r["name"]: r["samples"] for r in s["relay_cumulative"]}
    # The frames a forked process inherited (the supervisor's start) are not its work.
    assert "_supervise (relay/commands/run.py)" not in cumulative and "worker_context (relay/forkserver.py)" \
        not in cumulative, cumulative
    assert cumulative["worker_main (relay/worker.py)"] == 40 and cumulative["Supervisor.run (relay/supervisor.py)"] == 6
    stages = {r["name"]: r["samples"] for r in s["worker_main_stages"]}
    assert stages == {"map rows to events": 40}


def test_the_sampler_attaches_to_a_process_and_keeps_its_samples_when_stopped_early(tmp_path):
    """The real py-spy on a busy interpreter: attached by pid, and stopped before its target exits
    (the timeout path: SIGINT makes py-spy write what it has; SIGTERM would lose it all)."""
    import subprocess
    import sys
    import time

    from benchmarks.sampling import Sampler

    busy = subprocess.Popen([sys.executable, "-c", "while True: sum(range(1000))"])
    try:
        spy = Sampler(tmp_path / "busy.raw")
        spy.attach(busy.pid)
        time.sleep(1.0)
        raw = spy.wait(timeout=0.2)
    finally:
        busy.kill()
        busy.wait()
    s = summarize(raw, events=1, rate_hz=spy.rate_hz)
    assert s["samples"] > 20, s  # ~1 s at 200 Hz, holding the GIL all along
    assert any(r["name"].startswith("<module> (<string>") for r in s["own"]), s["own"]
