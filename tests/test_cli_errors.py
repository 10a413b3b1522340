"""The command line's error contract (DESIGN §8), through real `python -m relay` processes:
user errors are one line on stderr naming what to fix, exit code 2, never a traceback."""
from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import CQL_PORT
from harness import Outbox, free_port, write_config

REPO = Path(__file__).resolve().parent.parent
COMMANDS = ["run", "status", "config check", "schema apply"]
# A relay log record at a level that is not a problem (e.g. `relay run`'s start-up line).
LOG_RECORD = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (DEBUG|INFO) ")


@dataclass
class Result:
    returncode: int
    stdout: str
    stderr: str
    seconds: float

    @property
    def stderr_lines(self) -> list[str]:
        return [line for line in self.stderr.splitlines() if line.strip()]

    @property
    def problem_lines(self) -> list[str]:
        """stderr without INFO/DEBUG log records."""
        return [line for line in self.stderr_lines if not LOG_RECORD.match(line)]

    def __str__(self) -> str:
        return f"exit {self.returncode} after {self.seconds:.1f}s\n--- stdout\n{self.stdout}\n--- stderr\n{self.stderr}"


def relay(*args: str, timeout: float = 60) -> Result:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RELAY_")}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    env["PYTHONUNBUFFERED"] = "1"
    started = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "relay", *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=timeout)
    return Result(proc.returncode, proc.stdout, proc.stderr, time.monotonic() - started)


def assert_one_line_error(res: Result, *fragments: str) -> str:
    assert res.returncode == 2, str(res)
    assert "Traceback" not in res.stdout + res.stderr, str(res)
    assert len(res.stderr_lines) == 1, f"expected exactly one line on stderr:\n{res}"
    line = res.stderr_lines[0]
    assert line.startswith("relay: "), line
    for fragment in fragments:
        assert fragment in line, f"{fragment!r} not in {line!r}"
    return line


# --------------------------------------------------------------------------- bad configuration

TABLE = '[[tables]]\nname = "shop.outbox"\n'
KAFKA = '[kafka]\nbootstrap_servers = "127.0.0.1:9092"\n'

BAD_CONFIGS = {
    # name: (file content or None for a missing file, fragments the message must contain besides the path)
    "missing-file": (None, ["no such config file"]),
    "invalid-toml": (TABLE + "[kafka\nbootstrap_servers = 'x'\n", ["invalid TOML", "line 3"]),
    "unknown-key": (TABLE + KAFKA + 'bootstrap_server = "typo:9092"\n',
                    ["kafka.bootstrap_server: unknown key"]),
    "wrong-type": (TABLE + KAFKA + '[scylla]\nport = "ninety-forty-two"\n',
                   ["scylla.port: expected an integer"]),
    "no-bootstrap-servers": (TABLE + '[redis]\nurl = "redis://127.0.0.1:6379/0"\n',
                             ["kafka.bootstrap_servers: required"]),
}


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize("case", list(BAD_CONFIGS))
def test_bad_config_is_one_line_exit_2(tmp_path, case, command):
    text, fragments = BAD_CONFIGS[case]
    path = tmp_path / "relay.toml"
    if text is not None:
        path.write_text(text)
    res = relay(*command.split(), "--config", str(path))
    line = assert_one_line_error(res, str(path), *fragments)
    assert line.startswith(f"relay: {path}: "), "the message starts with the file"
    assert res.stdout == "", str(res)


def test_relay_config_variable_is_used_and_named(tmp_path):
    path = tmp_path / "from-env.toml"
    path.write_text(TABLE)
    env_res = subprocess.run([sys.executable, "-m", "relay", "config", "check"], cwd=REPO, capture_output=True,
                             text=True, timeout=60,
                             env={**{k: v for k, v in os.environ.items() if not k.startswith("RELAY_")},
                                  "RELAY_CONFIG": str(path)})
    res = Result(env_res.returncode, env_res.stdout, env_res.stderr, 0)
    assert_one_line_error(res, f"{path}: kafka.bootstrap_servers: required")


# --------------------------------------------------------------------------- unreachable Cassandra

def unreachable_config(tmp_path: Path) -> Path:
    path = tmp_path / "unreachable.toml"
    path.write_text(f"""
[scylla]
contact_points = ["127.0.0.1"]
port = 1

{TABLE}
{KAFKA}
[metrics]
host = "127.0.0.1"
port = {free_port()}
""")
    return path


@pytest.mark.parametrize("command", ["run", "schema apply"])
def test_unreachable_cassandra_exits_2_quickly(tmp_path, command):
    res = relay(*command.split(), "--config", str(unreachable_config(tmp_path)), timeout=45)
    assert res.returncode == 2, str(res)
    assert res.seconds < 30, str(res)
    last = res.stderr_lines[-1]
    assert last.startswith("relay: cannot connect to Scylla/Cassandra at 127.0.0.1:1"), str(res)


@pytest.mark.parametrize("command", ["run", "schema apply"])
def test_unreachable_cassandra_is_one_line_without_traceback(tmp_path, command):
    res = relay(*command.split(), "--config", str(unreachable_config(tmp_path)), timeout=45)
    assert res.returncode == 2, str(res)
    assert "Traceback" not in res.stdout + res.stderr, str(res)
    assert len(res.problem_lines) == 1, str(res)
    assert res.problem_lines[0].startswith("relay: cannot connect to Scylla/Cassandra at 127.0.0.1:1")


# --------------------------------------------------------------------------- relay schema not applied

def test_run_before_schema_apply(tmp_path, keyspace, kafka_bootstrap, redis_url):
    config = write_config(tmp_path / "relay.toml", keyspace, kafka_bootstrap, redis_url)
    res = relay("run", "--config", str(config), timeout=60)
    assert res.returncode == 2, str(res)
    assert "Traceback" not in res.stdout + res.stderr, str(res)
    assert len(res.problem_lines) == 1, str(res)
    line = res.problem_lines[0]
    assert line.startswith("relay: ") and "relay schema apply" in line, line
    assert keyspace in line, "the message names the keyspace"


def test_status_before_schema_apply_is_one_line(tmp_path, keyspace, kafka_bootstrap, redis_url):
    config = write_config(tmp_path / "relay.toml", keyspace, kafka_bootstrap, redis_url)
    res = relay("status", "--config", str(config), timeout=60)
    assert_one_line_error(res, "relay schema apply")


# --------------------------------------------------------------------------- relay config check

@pytest.fixture
def applied(tmp_path, cql, keyspace, kafka_bootstrap, redis_url):
    """An emulated outbox with CDC and relay's tables created by `relay schema apply`; returns the config."""
    Outbox.create(cql, keyspace)
    config = write_config(tmp_path / "relay.toml", keyspace, kafka_bootstrap, redis_url)
    res = relay("schema", "apply", "--config", str(config))
    assert res.returncode == 0, str(res)
    assert f"ok  {keyspace}.checkpoints" in res.stdout and f"ok  {keyspace}.dead_letters" in res.stdout, str(res)
    return config


def screen(res: Result) -> dict[str, str]:
    """`relay config check` lines by their first word."""
    return {line.split()[0]: line for line in res.stdout.splitlines() if line.strip()}


def test_config_check_reports_kafka_and_redis_down(tmp_path, keyspace, applied):
    kafka_port, redis_port = free_port(), free_port()
    config = write_config(tmp_path / "down.toml", keyspace, f"127.0.0.1:{kafka_port}",
                          f"redis://127.0.0.1:{redis_port}/0")
    res = relay("config", "check", "--config", str(config), timeout=60)
    assert_one_line_error(res, "2 service(s) failed")
    lines = screen(res)
    assert set(lines) == {"config", "scylla", "kafka", "redis"}, str(res)
    assert lines["config"].split()[2] == "ok", lines["config"]
    assert lines["scylla"].split()[1] == "ok", lines["scylla"]
    assert f"127.0.0.1:{CQL_PORT}" in lines["scylla"] and f"keyspace {keyspace} ok" in lines["scylla"]
    assert lines["kafka"].split()[1] == "FAIL" and f"127.0.0.1:{kafka_port}" in lines["kafka"], lines["kafka"]
    assert lines["redis"].split()[1] == "FAIL" and f"127.0.0.1:{redis_port}" in lines["redis"], lines["redis"]
    assert res.seconds < 30, str(res)


def test_config_check_against_the_stack_passes(keyspace, applied, kafka_bootstrap, redis_url):
    res = relay("config", "check", "--config", str(applied), timeout=60)
    assert res.returncode == 0, str(res)
    assert "Traceback" not in res.stdout + res.stderr, str(res)
    assert res.problem_lines == [], str(res)
    lines = screen(res)
    assert [lines[k].split()[1] for k in ("scylla", "kafka", "redis")] == ["ok"] * 3, str(res)
    assert f"{keyspace}.outbox: vnodes, 1 generation(s)" in lines["scylla"]
    assert kafka_bootstrap in lines["kafka"] and "broker(s)" in lines["kafka"]
    assert "PONG" in lines["redis"]


def test_config_check_without_relay_schema_fails_on_scylla(tmp_path, cql, keyspace, kafka_bootstrap, redis_url):
    Outbox.create(cql, keyspace)
    config = write_config(tmp_path / "relay.toml", keyspace, kafka_bootstrap, redis_url)
    res = relay("config", "check", "--config", str(config), timeout=60)
    assert_one_line_error(res, "1 service(s) failed")
    lines = screen(res)
    assert lines["scylla"].split()[1] == "FAIL" and "relay schema apply" in lines["scylla"], str(res)
    assert lines["kafka"].split()[1] == "ok" and lines["redis"].split()[1] == "ok", str(res)


# --------------------------------------------------------------------------- arguments

def test_help_lists_every_command():
    res = relay("--help", timeout=30)
    assert res.returncode == 0, str(res)
    listed = re.findall(r"^ {4}(\w+)\s", res.stdout, flags=re.MULTILINE)
    for command in ("run", "schema", "config", "status", "dlq", "loadgen", "verify"):
        assert command in listed, f"{command} missing from `relay --help`:\n{res.stdout}"
    assert res.stderr == ""


def test_run_until_garbage(tmp_path):
    config = write_config(tmp_path / "relay.toml", "never_created", "127.0.0.1:9092", "redis://127.0.0.1:6379/0")
    res = relay("run", "--until", "garbage", "--config", str(config), timeout=30)
    assert_one_line_error(res, "--until", "garbage")
    assert res.seconds < 20, str(res)


def test_unknown_command_exits_2():
    res = relay("frobnicate", timeout=30)
    assert res.returncode == 2, str(res)
    assert "Traceback" not in res.stdout + res.stderr
    assert "invalid choice" in res.stderr
