"""The command line's error contract (DESIGN §8), through real `python -m relay` processes:
user errors are one line on stderr naming what to fix, exit code 2, never a traceback."""
from __future__ import annotations

import re
from dataclasses import dataclass

import pytest
from conftest import CQL_PORT
from harness import Outbox, ReservedPort, run_relay, write_config

COMMANDS = ["run", "status", "config check", "schema apply"]
# A relay log record at a level that is not a problem (e.g. `relay run`'s start-up line).
LOG_RECORD = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (DEBUG|INFO) ")


@dataclass
class Result:
    returncode: int
    stdout: str
    stderr: str

    @property
    def stderr_lines(self) -> list[str]:
        return [line for line in self.stderr.splitlines() if line.strip()]

    @property
    def problem_lines(self) -> list[str]:
        """stderr without INFO/DEBUG log records."""
        return [line for line in self.stderr_lines if not LOG_RECORD.match(line)]

    def __str__(self) -> str:
        return f"exit {self.returncode}\n--- stdout\n{self.stdout}\n--- stderr\n{self.stderr}"


def relay(*args: str, env: dict[str, str] | None = None, timeout: float = 120) -> Result:
    """`python -m relay ARGS` without any RELAY_* variable but `env` (no login from the environment)."""
    res = run_relay(*args, env=env, credentials=False, timeout=timeout)
    return Result(res.returncode, res.stdout, res.stderr)


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
    res = relay("config", "check", env={"RELAY_CONFIG": str(path)})
    assert_one_line_error(res, f"{path}: kafka.bootstrap_servers: required")


# --------------------------------------------------------------------------- unreachable Cassandra

@pytest.fixture
def cassandra_down():
    """A port where no Cassandra answers (bound by the test, never listened on)."""
    port = ReservedPort()
    yield port.port
    port.close()


@pytest.mark.parametrize("command", ["run", "schema apply"])
def test_unreachable_cassandra_is_one_line_exit_2_without_traceback(tmp_path, keyspace_name, cassandra_down,
                                                                    command):
    """Exits by itself (how fast is a benchmark's business; the timeout only ends a hang)."""
    config = write_config(tmp_path / "unreachable.toml", keyspace_name, scylla={"port": cassandra_down})
    res = relay(*command.split(), "--config", str(config))
    assert res.returncode == 2, str(res)
    assert "Traceback" not in res.stdout + res.stderr, str(res)
    assert len(res.problem_lines) == 1, str(res)
    assert res.problem_lines[0].startswith(f"relay: cannot connect to Scylla/Cassandra at 127.0.0.1:{cassandra_down}")
    assert res.stderr_lines[-1] == res.problem_lines[0], "the message is the last thing said"


# --------------------------------------------------------------------------- relay schema not applied

def test_run_before_schema_apply(tmp_path, keyspace, kafka_bootstrap, redis_url):
    config = write_config(tmp_path / "relay.toml", keyspace)
    res = relay("run", "--config", str(config))
    assert res.returncode == 2, str(res)
    assert "Traceback" not in res.stdout + res.stderr, str(res)
    assert len(res.problem_lines) == 1, str(res)
    line = res.problem_lines[0]
    assert line.startswith("relay: ") and "relay schema apply" in line, line
    assert keyspace in line, "the message names the keyspace"


def test_status_before_schema_apply_is_one_line(tmp_path, keyspace, kafka_bootstrap, redis_url):
    config = write_config(tmp_path / "relay.toml", keyspace)
    res = relay("status", "--config", str(config))
    assert_one_line_error(res, "relay schema apply")


# --------------------------------------------------------------------------- relay config check

@pytest.fixture
def applied(tmp_path, cql, keyspace, kafka_bootstrap, redis_url):
    """An emulated outbox with CDC and relay's tables created by `relay schema apply`; returns the config."""
    Outbox.create(cql, keyspace)
    config = write_config(tmp_path / "relay.toml", keyspace)
    res = relay("schema", "apply", "--config", str(config))
    assert res.returncode == 0, str(res)
    assert f"ok  {keyspace}.checkpoints" in res.stdout and f"ok  {keyspace}.dead_letters" in res.stdout, str(res)
    return config


def screen(res: Result) -> dict[str, str]:
    """`relay config check` lines by their first word."""
    return {line.split()[0]: line for line in res.stdout.splitlines() if line.strip()}


def test_config_check_reports_kafka_and_redis_down(tmp_path, keyspace, applied):
    kafka, redis = ReservedPort(), ReservedPort()  # bound by the test, never listened on: down
    kafka_port, redis_port = kafka.port, redis.port
    config = write_config(tmp_path / "down.toml", keyspace, bootstrap=f"127.0.0.1:{kafka_port}",
                          redis_url=f"redis://127.0.0.1:{redis_port}/0")
    try:
        res = relay("config", "check", "--config", str(config))
    finally:
        kafka.close()
        redis.close()
    assert_one_line_error(res, "2 service(s) failed")
    lines = screen(res)
    assert set(lines) == {"config", "scylla", "kafka", "redis"}, str(res)
    assert lines["config"].split()[2] == "ok", lines["config"]
    assert lines["scylla"].split()[1] == "ok", lines["scylla"]
    assert f"127.0.0.1:{CQL_PORT}" in lines["scylla"] and f"keyspace {keyspace} ok" in lines["scylla"]
    assert lines["kafka"].split()[1] == "FAIL" and f"127.0.0.1:{kafka_port}" in lines["kafka"], lines["kafka"]
    assert lines["redis"].split()[1] == "FAIL" and f"127.0.0.1:{redis_port}" in lines["redis"], lines["redis"]


def test_config_check_against_the_stack_passes(keyspace, applied, kafka_bootstrap, redis_url):
    res = relay("config", "check", "--config", str(applied))
    assert res.returncode == 0, str(res)
    assert "Traceback" not in res.stdout + res.stderr, str(res)
    assert res.problem_lines == [], str(res)
    lines = screen(res)
    assert [lines[k].split()[1] for k in ("scylla", "kafka", "redis")] == ["ok"] * 3, str(res)
    assert f"{keyspace}.outbox: vnodes, 1 generation(s)" in lines["scylla"]
    assert kafka_bootstrap in lines["kafka"] and "1 broker(s), cluster " in lines["kafka"], lines["kafka"]
    assert "PONG" in lines["redis"]


def test_config_check_without_relay_schema_fails_on_scylla(tmp_path, cql, keyspace, kafka_bootstrap, redis_url):
    Outbox.create(cql, keyspace)
    config = write_config(tmp_path / "relay.toml", keyspace)
    res = relay("config", "check", "--config", str(config))
    assert_one_line_error(res, "1 service(s) failed")
    lines = screen(res)
    assert lines["scylla"].split()[1] == "FAIL" and "relay schema apply" in lines["scylla"], str(res)
    assert lines["kafka"].split()[1] == "ok" and lines["redis"].split()[1] == "ok", str(res)


# --------------------------------------------------------------------------- arguments

def test_help_lists_every_command():
    res = relay("--help")
    assert res.returncode == 0, str(res)
    listed = re.findall(r"^ {4}(\w+)\s", res.stdout, flags=re.MULTILINE)
    for command in ("run", "schema", "config", "status", "dlq", "loadgen", "verify"):
        assert command in listed, f"{command} missing from `relay --help`:\n{res.stdout}"
    assert res.stderr == ""


def test_run_until_garbage(tmp_path, keyspace_name):
    config = write_config(tmp_path / "relay.toml", keyspace_name)
    res = relay("run", "--until", "garbage", "--config", str(config))
    assert_one_line_error(res, "--until", "garbage")


def test_unknown_command_exits_2():
    res = relay("frobnicate")
    assert res.returncode == 2, str(res)
    assert "Traceback" not in res.stdout + res.stderr
    assert "invalid choice" in res.stderr
