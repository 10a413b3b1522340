"""Static checks of the deployment files: docker-compose.yml, Dockerfile and deploy/.

Nothing here runs Docker, Kubernetes or a service. The files are parsed and checked against
each other and against the code: config keys and RELAY_* variables against relay/config.py,
commands against DESIGN §8 (and the real argument parser where a command is built), metric
names against deploy/METRICS.md, ports against [metrics] port, host paths against the repo.
Every check is a helper that returns a list of problems; `test_checks_catch_mistakes` feeds
each helper a wrong input to prove it can fail.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import shutil
import subprocess
import typing
from pathlib import Path

import pytest
import yaml
from conftest import REPO

from relay import config as relay_config

COMPOSE_FILE = REPO / "docker-compose.yml"
DOCKERFILE = REPO / "Dockerfile"
DEPLOY = REPO / "deploy"
COMPOSE_TOML = DEPLOY / "compose" / "relay.toml"
PROMETHEUS_YML = DEPLOY / "prometheus" / "prometheus.yml"
ALERTS_YML = DEPLOY / "prometheus" / "alerts.yml"
ALERTS_TEST_YML = DEPLOY / "prometheus" / "alerts_test.yml"
DATASOURCE_YML = DEPLOY / "grafana" / "provisioning" / "datasources" / "prometheus.yml"
DASHBOARD_PROVIDER_YML = DEPLOY / "grafana" / "provisioning" / "dashboards" / "relay.yml"
DASHBOARD_JSON = DEPLOY / "grafana" / "dashboards" / "relay.json"
METRICS_MD = DEPLOY / "METRICS.md"
K8S = DEPLOY / "k8s"
HTTPSERVER_PY = REPO / "relay" / "httpserver.py"
# Kubernetes release the manifests are checked against (schemas shipped by kubernetes-validate).
K8S_VERSION = "1.29"
# The broker's default group.min.session.timeout.ms / group.max.session.timeout.ms: a session
# timeout (leases.duration_seconds) outside them is refused when the member joins.
BROKER_SESSION_TIMEOUT_RANGE_S = (6.0, 1800.0)

# The metrics contract (deploy/METRICS.md): name → type.
METRICS = {
    "relay_events_read_total": "counter",
    "relay_events_published_total": "counter",
    "relay_events_deduplicated_total": "counter",
    "relay_events_dead_lettered_total": "counter",
    "relay_events_skipped_total": "counter",
    "relay_publish_latency_seconds": "histogram",
    "relay_end_to_end_latency_seconds": "histogram",
    "relay_task_lag_seconds": "gauge",
    "relay_checkpoint_writes_total": "counter",
    "relay_cql_read_duration_seconds": "histogram",
    "relay_retry_attempts_total": "counter",
    "relay_breaker_state": "gauge",
    "relay_breaker_transitions_total": "counter",
    "relay_workers_alive": "gauge",
    "relay_worker_restarts_total": "counter",
    "relay_generation_current_seconds": "gauge",
    "relay_dlq_pending": "gauge",
    "relay_dlq_dead_letters": "gauge",
    "relay_dlq_oldest_pending_age_seconds": "gauge",
    "relay_dlq_replayed_total": "counter",
    "relay_dlq_replay_failed_total": "counter",
    "relay_dedup_unavailable_total": "counter",
    "relay_checkpoint_ttl_margin_seconds": "gauge",
    "relay_clock_ahead_seconds": "gauge",
    "relay_dlq_write_failures_total": "counter",
    "relay_worker_hangs_total": "counter",
    "relay_generations_expired_total": "counter",
    "relay_generations_disappeared_total": "counter",
    # Slots shared between replicas through the consumer group (DESIGN §5b).
    "relay_slots_owned": "gauge",
    "relay_slots_total": "gauge",
    "relay_rebalances_total": "counter",
    "relay_rebalance_seconds": "histogram",
    "relay_slots_lost_total": "counter",
    "relay_fence_events_total": "counter",
}
# Series Prometheus itself adds to every target; alerts may use them.
PROMETHEUS_SERIES = {"up"}

# DESIGN §8: command → its subcommands (None: no subcommand).
COMMANDS: dict[str, set[str] | None] = {
    "run": None,
    "schema": {"apply", "print"},
    "config": {"check"},
    "status": None,
    "dlq": {"list", "stats", "show", "replay", "discard"},
    "replay": None,
    "loadgen": None,
    "verify": None,
}
# Read by the CLI itself, not by relay.config's RELAY_<SECTION>__<KEY> overrides.
CLI_ENV = {"RELAY_CONFIG", "RELAY_LOG_LEVEL"}


# --------------------------------------------------------------------------- loading


def load_yaml(path: Path) -> typing.Any:
    with open(path) as fh:
        return yaml.safe_load(fh)


def load_yaml_docs(path: Path) -> list[dict]:
    with open(path) as fh:
        return [d for d in yaml.safe_load_all(fh) if d]


def compose() -> dict:
    return load_yaml(COMPOSE_FILE)


def k8s_doc(name: str, kind: str) -> dict:
    docs = [d for d in load_yaml_docs(K8S / name) if d.get("kind") == kind]
    assert len(docs) == 1, f"deploy/k8s/{name}: expected one {kind}, found {len(docs)}"
    return docs[0]


def k8s_resources() -> list[tuple[str, dict]]:
    """(path, document) of every Kubernetes object under deploy/k8s (Helm values files are not)."""
    out = []
    for path in sorted(K8S.rglob("*.yaml")):
        for doc in load_yaml_docs(path):
            if "apiVersion" in doc and "kind" in doc:
                out.append((str(path.relative_to(K8S)), doc))
    return out


def http_paths(source: str) -> set[str]:
    """The paths relay's HTTP server answers (`path == "/x"` in relay/httpserver.py)."""
    return set(re.findall(r"\bpath\s*==\s*\"(/[\w\-/]*)\"", source))


def dockerfile_instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of the final stage, continuation lines joined, comments dropped."""
    logical, buf = [], ""
    for raw in text.splitlines():
        line = raw.strip()
        if line.startswith("#") or not (line or buf):
            continue
        if line.endswith("\\"):
            buf += line[:-1] + " "
            continue
        logical.append(buf + line)
        buf = ""
    out: list[tuple[str, str]] = []
    for line in logical:
        instr, _, args = line.partition(" ")
        if instr.upper() == "FROM":
            out = []  # only the last stage makes the image
        out.append((instr.upper(), args.strip()))
    return out


def dockerfile() -> dict[str, list[str]]:
    by: dict[str, list[str]] = {}
    for instr, args in dockerfile_instructions(DOCKERFILE.read_text()):
        by.setdefault(instr, []).append(args)
    return by


def exec_form(args: str) -> list[str]:
    """A Dockerfile ENTRYPOINT/CMD: exec form (JSON) or shell form."""
    args = args.strip()
    if args.startswith("["):
        return json.loads(args)
    return ["/bin/sh", "-c", args]


def env_dict(env: typing.Any) -> dict[str, str]:
    """Compose `environment` (mapping or KEY=VALUE list) → dict, as the container sees it."""
    if not env:
        return {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {k: compose_interpolate("" if v is None else str(v)) for k, v in env.items()}


def as_argv(value: typing.Any) -> list[str]:
    if value is None:
        return []
    return list(value) if isinstance(value, list) else value.split()


def relay_image_services(spec: dict) -> dict[str, dict]:
    """Compose services that run the relay image (built from this repo's Dockerfile)."""
    relay_images = {s["image"] for s in spec["services"].values() if "build" in s and "image" in s}
    return {name: s for name, s in spec["services"].items() if "build" in s or s.get("image") in relay_images}


def effective_argv(service: dict) -> list[str]:
    """ENTRYPOINT + CMD of a relay-image compose service after its overrides."""
    df = dockerfile()
    entrypoint = as_argv(service["entrypoint"]) if "entrypoint" in service else exec_form(df["ENTRYPOINT"][-1])
    if "command" in service:
        command = as_argv(service["command"])
    elif "entrypoint" in service:
        command = []  # overriding the entrypoint drops the image's CMD
    else:
        command = exec_form(df["CMD"][-1]) if "CMD" in df else []
    return entrypoint + command


def k8s_argv(container: dict) -> list[str]:
    df = dockerfile()
    entrypoint = container.get("command") or exec_form(df["ENTRYPOINT"][-1])
    args = container.get("args")
    if args is None:
        args = [] if "command" in container else exec_form(df["CMD"][-1])
    return list(entrypoint) + list(args)


def compose_interpolate(text: str, environ: dict[str, str] | None = None) -> str:
    """What compose makes of a string: `$$` is a literal `$`; `$VAR`, `${VAR}` and
    `${VAR:-default}` come from the environment (empty when unset)."""
    environ = environ or {}

    def sub(m: re.Match) -> str:
        if m.group(0) == "$$":
            return "$"
        value = environ.get(m.group(1) or m.group(3), "")
        return value or m.group(2) or ""

    return re.sub(r"\$\$|\$\{(\w+)(?::?-([^}]*))?\}|\$(\w+)", sub, text)


def parse_duration(value: str | int) -> float:
    """Compose duration ('45s', '1m30s', '500ms') → seconds."""
    if isinstance(value, int | float):
        return float(value)
    units = {"h": 3600, "m": 60, "s": 1, "ms": 0.001, "us": 1e-6}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|us|h|m|s)", value)
    assert parts and "".join(n + u for n, u in parts) == value, f"not a duration: {value!r}"
    return sum(float(n) * units[u] for n, u in parts)


def url_ports(text: str, path: str) -> set[int]:
    return {int(p) for p in re.findall(r"https?://[\w.\-]+:(\d+)" + re.escape(path), text)}


# --------------------------------------------------------------------------- checks (return problems)


def env_var_problem(var: str) -> str | None:
    """Why `var` is not a variable relay reads, or None if it is (RELAY_<SECTION>__<KEY>, DESIGN §7)."""
    if not var.startswith("RELAY_") or var in CLI_ENV:
        return None
    if "__" not in var:
        return f"{var}: not of the form RELAY_<SECTION>__<KEY>, so relay ignores it"
    parts = var[len("RELAY_"):].lower().split("__")
    sections = typing.get_type_hints(relay_config.Config)
    section, keys = parts[0], parts[1:]
    if section == "tables":
        if len(keys) < 2 or not keys[0].isdigit():
            return f"{var}: tables are overridden as RELAY_TABLES__<index>__<KEY>"
        cls, keys = relay_config.TableConfig, keys[1:]
    elif section != "source" and dataclasses.is_dataclass(sections.get(section)):
        cls = sections[section]
    else:
        return f"{var}: no config section [{section}]"
    for i, key in enumerate(keys):
        fields = typing.get_type_hints(cls)
        if key not in fields:
            return f"{var}: [{section}] has no key {key!r}"
        last = i == len(keys) - 1
        if cls is relay_config.KafkaConfig and key == "producer":
            # RELAY_KAFKA__PRODUCER (a JSON object) or RELAY_KAFKA__PRODUCER__<librdkafka property>
            return None if len(keys) - i in (1, 2) else f"{var}: expected RELAY_KAFKA__PRODUCER__<PROPERTY>"
        if dataclasses.is_dataclass(fields[key]):
            if last:
                return f"{var}: {key!r} is a table; name one of its keys"
            cls = fields[key]
        elif not last:
            return f"{var}: {key!r} is not a table"
    return None


def env_problems(env: dict[str, str], base_toml: Path | None) -> list[str]:
    problems = [p for p in (env_var_problem(v) for v in env) if p]
    if not problems:
        # The loader itself must accept the values too (types, validation).
        try:
            relay_config.load(base_toml, environ=env)
        except relay_config.ConfigError as exc:
            problems.append(str(exc))
    return problems


def port_problems(service_name: str, service: dict) -> list[str]:
    problems = []
    replicas = (service.get("deploy") or {}).get("replicas", 1)
    for port in service.get("ports") or []:
        if isinstance(port, dict):
            host_ip, published = port.get("host_ip"), port.get("published")
        else:
            spec = str(port).split("/")[0]
            parts = spec.split(":")
            host_ip = parts[0] if len(parts) == 3 else None
            published = parts[-2] if len(parts) >= 2 else None
        if host_ip != "127.0.0.1":
            problems.append(f"{service_name}: port {port!r} is not bound to 127.0.0.1")
        if replicas > 1 and published:
            problems.append(f"{service_name}: {replicas} replicas cannot share host port {published}")
    return problems


def host_paths(spec: dict) -> list[tuple[str, str, str]]:
    """(service, kind, host path) for every host file or directory compose refers to."""
    out = []
    for name, s in spec.get("services", {}).items():
        build = s.get("build")
        if build is not None:
            ctx = build if isinstance(build, str) else build.get("context", ".")
            out.append((name, "build context", ctx))
            if isinstance(build, dict) and "dockerfile" in build:
                out.append((name, "dockerfile", os.path.join(ctx, build["dockerfile"])))
        for v in s.get("volumes") or []:
            if isinstance(v, dict):
                if v.get("type") == "bind":
                    out.append((name, "volume", v["source"]))
            else:
                src = v.split(":")[0]
                if src.startswith((".", "/", "~")):
                    out.append((name, "volume", src))
        env_file = s.get("env_file")
        for ef in [env_file] if isinstance(env_file, str | dict) else env_file or []:
            out.append((name, "env_file", ef["path"] if isinstance(ef, dict) else ef))
    for top in ("configs", "secrets"):
        for name, c in (spec.get(top) or {}).items():
            if "file" in c:
                out.append((f"{top}.{name}", "file", c["file"]))
    return out


def host_path_problems(spec: dict, base: Path) -> list[str]:
    problems = []
    for service, kind, path in host_paths(spec):
        if os.path.isabs(path) or path.startswith("~"):
            problems.append(f"{service}: {kind} {path} is outside the repository")
            continue
        full = (base / path).resolve()
        if not full.is_relative_to(base.resolve()):
            problems.append(f"{service}: {kind} {path} is outside the repository")
        elif not full.exists():
            problems.append(f"{service}: {kind} {path} does not exist")
    return problems


def bind_targets(service: dict) -> dict[str, str]:
    """container path → host path of a compose service's bind mounts."""
    out = {}
    for v in service.get("volumes") or []:
        if isinstance(v, dict):
            if v.get("type") == "bind":
                out[v["target"]] = v["source"]
        else:
            parts = v.split(":")
            if len(parts) >= 2 and parts[0].startswith((".", "/")):
                out[parts[1]] = parts[0]
    return out


def command_problems(argv: list[str]) -> list[str]:
    """`relay <command> [<subcommand>]` must be one of DESIGN §8's."""
    if not argv or os.path.basename(argv[0]) != "relay":
        return [f"{argv}: does not run relay"]
    if len(argv) < 2 or argv[1] not in COMMANDS:
        return [f"{argv}: {argv[1] if len(argv) > 1 else '(none)'!r} is not a relay command "
                f"({', '.join(COMMANDS)})"]
    subs = COMMANDS[argv[1]]
    if subs and (len(argv) < 3 or argv[2] not in subs):
        return [f"{argv}: `relay {argv[1]}` needs one of {', '.join(sorted(subs))}"]
    return []


PROMQL_WORDS = {"and", "or", "unless", "by", "without", "on", "ignoring", "group_left", "group_right",
                "offset", "bool", "inf", "nan", "atan2"}


def promql_metric_names(expr: str) -> set[str]:
    """Metric names in a PromQL expression (functions, keywords, labels and durations removed)."""
    s = re.sub(r'"(?:\\.|[^"\\])*"|\'(?:\\.|[^\'\\])*\'', '""', expr)  # strings
    s = re.sub(r"\{[^{}]*\}", " ", s)  # label matchers
    s = re.sub(r"\[[^\[\]]*\]", " ", s)  # range / subquery selectors
    s = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)", " ", s)
    names = set()
    for m in re.finditer(r"(?<![\w.$])([A-Za-z_:][\w:]*)\b(\s*\()?", s):
        token, call = m.group(1), m.group(2)
        if call or token.lower() in PROMQL_WORDS:
            continue
        names.add(token)
    return names


def allowed_metric_names() -> set[str]:
    allowed = set(METRICS) | PROMETHEUS_SERIES
    for name, kind in METRICS.items():
        if kind == "histogram":
            allowed |= {name + suffix for suffix in ("_bucket", "_count", "_sum")}
    return allowed


def metric_problems(where: str, expr: str) -> list[str]:
    names = promql_metric_names(expr)
    bad = sorted(names - allowed_metric_names())
    return [f"{where}: {n} is not a relay metric (deploy/METRICS.md)" for n in bad]


def dashboard_exprs(dash: dict) -> list[tuple[str, str]]:
    """(where, PromQL) of every panel target and query variable of a Grafana dashboard."""
    out = []

    def walk(panels: list[dict]) -> None:
        for p in panels:
            for t in p.get("targets", []):
                if t.get("expr"):
                    out.append((f"panel {p.get('title')!r}", t["expr"]))
            walk(p.get("panels", []))

    walk(dash.get("panels", []))
    for var in dash.get("templating", {}).get("list", []):
        query = var.get("query")
        query = query.get("query", "") if isinstance(query, dict) else query or ""
        m = re.fullmatch(r"\s*label_values\(\s*(.+?)\s*,\s*(\w+)\s*\)\s*", query)
        if m:
            out.append((f"variable {var['name']!r}", m.group(1)))
        elif query:
            out.append((f"variable {var['name']!r}", query))
    return out


# --------------------------------------------------------------------------- compose


def test_compose_host_paths_exist():
    spec = compose()
    paths = host_paths(spec)
    assert {kind for _, kind, _ in paths} >= {"build context", "volume"}
    assert host_path_problems(spec, REPO) == []


def test_compose_ports_bind_loopback_only():
    spec = compose()
    problems = [p for name, s in spec["services"].items() for p in port_problems(name, s)]
    assert problems == []


def test_compose_services_and_dependencies():
    services = compose()["services"]
    assert {"scylla", "scylla-init", "kafka", "redis", "relay-schema", "relay", "loadgen",
            "prometheus", "grafana"} <= set(services)
    assert services["relay"]["deploy"]["replicas"] == 3
    assert services["loadgen"].get("profiles") == ["load"]
    for name, s in services.items():
        deps = s.get("depends_on") or {}
        for dep in deps if isinstance(deps, list) else deps.keys():
            assert dep in services, f"{name} depends on unknown service {dep}"
            cond = deps[dep].get("condition") if isinstance(deps, dict) else None
            if cond == "service_healthy":
                assert "healthcheck" in services[dep], f"{name} waits for {dep} healthy; it has no healthcheck"
    # Replicas start only once both keyspaces exist.
    relay_deps = services["relay"]["depends_on"]
    assert relay_deps["relay-schema"]["condition"] == "service_completed_successfully"
    assert relay_deps["scylla-init"]["condition"] == "service_completed_successfully"


def test_compose_relay_env_maps_to_config_keys():
    for name, s in relay_image_services(compose()).items():
        env = env_dict(s.get("environment"))
        assert env.get("RELAY_CONFIG") in bind_targets(s), \
            f"{name}: RELAY_CONFIG={env.get('RELAY_CONFIG')} is not a mounted file"
        host_toml = REPO / bind_targets(s)[env["RELAY_CONFIG"]]
        assert env_problems(env, host_toml) == [], name


def test_compose_relay_toml_loads():
    cfg = relay_config.load(COMPOSE_TOML, environ={})
    assert cfg.kafka.bootstrap_servers.split(":")[0] == "kafka"
    assert cfg.scylla.contact_points == ("scylla",)
    assert cfg.redis.url.startswith("redis://redis:")
    # The same file must not depend on the compose variables to be valid, and they must agree.
    env = env_dict(compose()["services"]["relay"]["environment"])
    with_env = relay_config.load(COMPOSE_TOML, environ=env)
    assert with_env.kafka.bootstrap_servers == cfg.kafka.bootstrap_servers
    assert with_env.scylla.contact_points == cfg.scylla.contact_points
    assert with_env.redis.url == cfg.redis.url


def test_compose_commands_are_relay_commands():
    services = relay_image_services(compose())
    assert {"relay", "relay-schema", "loadgen"} <= set(services)
    argvs = {name: effective_argv(s) for name, s in services.items()}
    assert argvs["relay"][:2] == ["relay", "run"]
    assert argvs["relay-schema"][:3] == ["relay", "schema", "apply"]
    assert argvs["loadgen"][:2] == ["relay", "loadgen"]
    problems = [p for argv in argvs.values() for p in command_problems(argv)]
    assert problems == []


def test_compose_loadgen_table_is_configured():
    services = compose()["services"]
    argv = effective_argv(services["loadgen"])
    table = argv[argv.index("--table") + 1]
    cfg = relay_config.load(COMPOSE_TOML, environ=env_dict(services["loadgen"]["environment"]))
    assert table in [t.name for t in cfg.tables]


def test_compose_scylla_init_renders_outbox_cql(tmp_path):
    """Run scylla-init's shell command with a stand-in cqlsh that captures the file it is given."""
    if not (shutil.which("sh") and shutil.which("sed")):
        pytest.skip("needs sh and sed")
    s = compose()["services"]["scylla-init"]
    script = as_argv(s["command"])[-1] if isinstance(s["command"], list) else s["command"]
    assert as_argv(s["entrypoint"])[-1] == "-c"
    script = compose_interpolate(script)
    # The container's scratch path first: the repository itself may live under /tmp (CI clones).
    script = script.replace("/tmp/", f"{tmp_path}/")
    for container, host in bind_targets(s).items():
        script = script.replace(container, str(REPO / host))
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "cqlsh").write_text('#!/bin/sh\nwhile [ $# -gt 0 ]; do\n  [ "$1" = -f ] && cp "$2" "$CAPTURE"\n'
                                '  shift\ndone\n')
    (fake / "cqlsh").chmod(0o755)
    capture = tmp_path / "captured.cql"
    env = {**os.environ, "PATH": f"{fake}:{os.environ['PATH']}", "CAPTURE": str(capture)}
    subprocess.run(["sh", "-c", script], check=True, env=env, timeout=30)
    cql = capture.read_text()
    assert "${" not in cql
    assert "CREATE KEYSPACE IF NOT EXISTS shop" in cql
    assert "{'class': 'SimpleStrategy', 'replication_factor': 1}" in cql
    assert "CREATE TABLE IF NOT EXISTS shop.outbox" in cql and "cdc = {'enabled': true" in cql
    cfg = relay_config.load(COMPOSE_TOML, environ={})
    assert "shop.outbox" in [t.name for t in cfg.tables]


def test_compose_replicas_share_through_the_group():
    """Three replicas of one service: distinct replica ids (their hostnames), one group, a
    session the broker accepts, and a single-broker Kafka that can host a group coordinator."""
    services = compose()["services"]
    relay = services["relay"]
    replicas = relay["deploy"]["replicas"]
    env = env_dict(relay["environment"])
    cfg = relay_config.load(COMPOSE_TOML, environ=env)
    assert 1 < replicas <= cfg.leases.slots
    # Every replica of the service gets the same environment and file: a replica id set there
    # would be shared by all, so it must come from each container's hostname.
    assert "RELAY_RELAY__REPLICA_ID" not in env and cfg.relay.replica_id == ""
    assert "hostname" not in relay and "container_name" not in relay
    # Static membership needs ids that survive a restart; compose replicas have none to offer.
    assert cfg.leases.static_membership is False
    low, high = BROKER_SESSION_TIMEOUT_RANGE_S
    assert low <= cfg.leases.duration_seconds <= high
    assert cfg.leases.renew_seconds * 3 <= cfg.leases.duration_seconds
    assert parse_duration(relay["stop_grace_period"]) >= cfg.relay.shutdown_timeout_seconds + 10
    kafka = env_dict(services["kafka"]["environment"])
    # One broker: __consumer_offsets (the coordinator's log) must fit on it.
    assert kafka["KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR"] == "1"
    assert kafka.get("KAFKA_GROUP_INITIAL_REBALANCE_DELAY_MS") == "0"


def test_compose_metrics_port_and_shutdown_agree():
    spec = compose()
    relay = spec["services"]["relay"]
    cfg = relay_config.load(COMPOSE_TOML, environ=env_dict(relay["environment"]))
    port = cfg.metrics.port
    assert [str(p) for p in relay.get("expose", [])] == [str(port)]
    health = json.dumps(relay["healthcheck"]["test"])
    assert url_ports(health, "/health") == {port}
    # More time than the drain needs before Docker's SIGKILL.
    assert parse_duration(relay["stop_grace_period"]) > cfg.relay.shutdown_timeout_seconds


def test_prometheus_scrapes_relay_replicas():
    prom = load_yaml(PROMETHEUS_YML)
    cfg = relay_config.load(COMPOSE_TOML, environ={})
    jobs = {j["job_name"]: j for j in prom["scrape_configs"]}
    assert "relay" in jobs
    sd = jobs["relay"]["dns_sd_configs"]
    assert [c["type"] for c in sd] == ["A"]
    assert sd[0]["names"] == ["relay"] and "relay" in compose()["services"]
    assert sd[0]["port"] == cfg.metrics.port
    # The rule file is mounted next to prometheus.yml in the container.
    service = compose()["services"]["prometheus"]
    mounts = bind_targets(service)
    config_arg = next(a for a in service["command"] if a.startswith("--config.file="))
    container_cfg = config_arg.split("=", 1)[1]
    assert (REPO / mounts[container_cfg]).resolve() == PROMETHEUS_YML.resolve()
    for rule in prom["rule_files"]:
        target = os.path.join(os.path.dirname(container_cfg), rule)
        assert target in mounts and (REPO / mounts[target]).resolve() == (PROMETHEUS_YML.parent / rule).resolve()


# --------------------------------------------------------------------------- Dockerfile


def test_dockerfile_matches_config():
    df = dockerfile()
    cfg = relay_config.load(COMPOSE_TOML, environ={})
    assert any(f.startswith("python:3.11-slim") for f in re.findall(r"^FROM\s+(\S+)", DOCKERFILE.read_text(), re.M))
    exposed = {int(p.split("/")[0]) for line in df["EXPOSE"] for p in line.split()}
    assert exposed == {cfg.metrics.port}
    assert url_ports(" ".join(df["HEALTHCHECK"]), "/health") == {cfg.metrics.port}
    assert "curl" not in " ".join(df["HEALTHCHECK"])
    assert exec_form(df["ENTRYPOINT"][-1]) == ["relay"]
    assert command_problems(exec_form(df["ENTRYPOINT"][-1]) + exec_form(df["CMD"][-1])) == []
    user = df["USER"][-1].split(":")[0]
    assert user not in ("root", "0")


def test_dockerignore_keeps_local_state_out():
    entries = {line.strip() for line in (REPO / ".dockerignore").read_text().splitlines()
               if line.strip() and not line.startswith("#")}
    assert {".venv", ".stack", ".git", "benchmarks/results"} <= entries
    assert "**/__pycache__" in entries or "__pycache__" in entries
    # What the image build copies from the context must exist and must not be ignored.
    sources = set()
    for stage in re.split(r"(?m)^FROM\s", DOCKERFILE.read_text())[1:]:
        for instr, args in dockerfile_instructions("FROM " + stage):
            if instr in ("COPY", "ADD") and not args.startswith("--from"):
                sources |= {a for a in args.split()[:-1] if not a.startswith("--")}
    assert sources and not sources & entries
    assert all((REPO / src).exists() for src in sources)


# --------------------------------------------------------------------------- metrics, dashboard, alerts


def test_metrics_md_lists_the_contract():
    rows = re.findall(r"^\|\s*`(relay_\w+)`\s*\|\s*(\w+)\s*\|", METRICS_MD.read_text(), re.M)
    assert dict(rows) == METRICS
    assert len(rows) == len(METRICS)


def test_metrics_contract_matches_the_code():
    """The package defines exactly the contract's metrics, with the same types."""
    defined: dict[str, str] = {}
    for source in sorted((REPO / "relay").rglob("*.py")):
        for kind, name in re.findall(r"\b(Counter|Gauge|Histogram)\(\s*\"(relay_\w+)\"", source.read_text()):
            assert defined.setdefault(name, kind.lower()) == kind.lower(), f"{name} defined as two types"
    assert defined == METRICS


def test_dashboard_uses_only_contract_metrics_and_covers_them():
    dash = json.loads(DASHBOARD_JSON.read_text())
    exprs = dashboard_exprs(dash)
    assert exprs
    problems = [p for where, e in exprs for p in metric_problems(where, e)]
    assert problems == []
    used = set().union(*(promql_metric_names(e) for _, e in exprs))
    base = {re.sub(r"_(bucket|count|sum)$", "", n) if n not in METRICS else n for n in used}
    assert set(METRICS) - base == set(), "metrics without a panel"


def test_dashboard_datasource_is_the_provisioned_one():
    ds = load_yaml(DATASOURCE_YML)["datasources"]
    uids = {d["uid"] for d in ds}
    prom = next(d for d in ds if d["type"] == "prometheus")
    services = compose()["services"]
    host, port = re.fullmatch(r"http://([\w\-]+):(\d+)/?", prom["url"]).groups()
    assert host in services
    assert any(str(p).endswith(f":{port}") for p in services[host].get("ports", []))
    dash = json.loads(DASHBOARD_JSON.read_text())

    def refs(node):
        if isinstance(node, dict):
            if isinstance(node.get("datasource"), dict):
                yield node["datasource"].get("uid")
            for v in node.values():
                yield from refs(v)
        elif isinstance(node, list):
            for v in node:
                yield from refs(v)

    used = set(refs(dash))
    assert used and used <= uids
    # The dashboard provider reads the directory the dashboards are mounted at.
    provider = load_yaml(DASHBOARD_PROVIDER_YML)["providers"][0]
    mounts = bind_targets(services["grafana"])
    assert (REPO / mounts[provider["options"]["path"]]).resolve() == DASHBOARD_JSON.parent.resolve()
    assert "provisioning" in str(mounts["/etc/grafana/provisioning"])


def test_alerts_use_contract_metrics_and_cover_the_required_cases():
    groups = load_yaml(ALERTS_YML)["groups"]
    rules = [r for g in groups for r in g["rules"]]
    problems = [p for r in rules for p in metric_problems(f"alert {r['alert']}", r["expr"])]
    assert problems == []
    by_metric = {}
    for r in rules:
        for n in promql_metric_names(r["expr"]):
            by_metric.setdefault(n, []).append(r)
    job = load_yaml(PROMETHEUS_YML)["scrape_configs"][0]["job_name"]
    assert any(f'up{{job="{job}"}}' in r["expr"] and "== 0" in r["expr"] for r in by_metric["up"])
    lag = by_metric["relay_task_lag_seconds"]
    assert any(re.search(r">\s*60\b", r["expr"]) and parse_duration(r.get("for", "0s")) == 300 for r in lag)
    assert any(re.search(r"==\s*1\b", r["expr"]) for r in by_metric["relay_breaker_state"])  # 1 = open
    assert any("increase(" in r["expr"] or "rate(" in r["expr"] for r in by_metric["relay_events_dead_lettered_total"])
    assert any(re.search(r"<\s*3600\b", r["expr"]) for r in by_metric["relay_checkpoint_ttl_margin_seconds"])
    assert any(">" in r["expr"] for r in by_metric["relay_dlq_oldest_pending_age_seconds"])
    assert any('status="failed"' in r["expr"] and "> 0" in r["expr"] for r in by_metric["relay_dlq_dead_letters"])
    # Slots: some without an owner for minutes (owned summed against the total, per group),
    # rebalance storms, expelled replicas and fence events.
    unowned = [r for r in by_metric["relay_slots_owned"] if "relay_slots_total" in promql_metric_names(r["expr"])
               and re.search(r"max by \(job, namespace\) \(relay_slots_total\)\s*-\s*"
                             r"sum by \(job, namespace\) \(relay_slots_owned\)\s*>\s*0", r["expr"])]
    assert unowned and 60 <= parse_duration(unowned[0]["for"]) <= 600
    assert unowned[0]["labels"]["severity"] == "critical"
    assert any("rate(" in r["expr"] and r.get("for") for r in by_metric["relay_rebalances_total"])
    assert any("increase(" in r["expr"] for r in by_metric["relay_slots_lost_total"])
    assert any("increase(" in r["expr"] for r in by_metric["relay_fence_events_total"])
    for r in rules:
        assert r["labels"]["severity"] in ("critical", "warning") and r["annotations"]["summary"]


def promtool() -> str | None:
    return os.environ.get("PROMTOOL") or shutil.which("promtool")


def test_alert_rules_pass_promtool():
    """`promtool check rules` and the unit tests in alerts_test.yml (slot alerts fire on the
    scenarios they are for, and not on a takeover or a rollout). promtool is Prometheus's own
    checker; Debian's `prometheus` package ships it."""
    tool = promtool()
    if not tool:
        pytest.skip("promtool not installed (PATH or $PROMTOOL)")
    tests = load_yaml(ALERTS_TEST_YML)
    assert tests["rule_files"] == [ALERTS_YML.name]
    tested = {t["alertname"] for case in tests["tests"] for t in case["alert_rule_test"]}
    slot_metrics = {"relay_slots_owned", "relay_slots_total", "relay_rebalances_total", "relay_slots_lost_total",
                    "relay_fence_events_total"}
    slot_alerts = {r["alert"] for g in load_yaml(ALERTS_YML)["groups"] for r in g["rules"]
                   if promql_metric_names(r["expr"]) & slot_metrics}
    assert slot_alerts and slot_alerts <= tested
    for args in (["check", "rules", ALERTS_YML.name], ["test", "rules", ALERTS_TEST_YML.name]):
        run = subprocess.run([tool, *args], cwd=ALERTS_YML.parent, capture_output=True, text=True, timeout=120)
        assert run.returncode == 0, run.stdout + run.stderr


def test_dashboard_queries_parse_with_promtool(tmp_path):
    """Every dashboard query, Grafana's variables filled in, is valid PromQL: promtool parses
    them as recording rules."""
    tool = promtool()
    if not tool:
        pytest.skip("promtool not installed (PATH or $PROMTOOL)")
    dash = json.loads(DASHBOARD_JSON.read_text())
    exprs = [e for where, e in dashboard_exprs(dash) if where.startswith("panel")]
    filled = [e.replace("$__rate_interval", "1m").replace("$table", ".*") for e in exprs]
    assert not [e for e in filled if "$" in e]
    rules = {"groups": [{"name": "dashboard", "rules": [{"record": f"dashboard:query{i}", "expr": e}
                                                        for i, e in enumerate(filled)]}]}
    path = tmp_path / "dashboard_rules.yml"
    path.write_text(yaml.safe_dump(rules))
    run = subprocess.run([tool, "check", "rules", str(path)], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stdout + run.stderr


# --------------------------------------------------------------------------- kubernetes


def k8s_container() -> tuple[dict, dict]:
    dep = k8s_doc("deployment.yaml", "Deployment")
    containers = dep["spec"]["template"]["spec"]["containers"]
    return dep, next(c for c in containers if c["name"] == "relay")


def k8s_config(tmp_path: Path, env: dict[str, str] | None = None) -> relay_config.Config:
    """The ConfigMap's relay.toml, loaded the way the pod loads it."""
    data = k8s_doc("configmap.yaml", "ConfigMap")["data"]["relay.toml"]
    path = tmp_path / "relay.toml"
    path.write_text(data)
    return relay_config.load(path, environ=env or {})


def k8s_env(container: dict) -> dict[str, str]:
    """The container's env; values from Secrets or the downward API get a placeholder."""
    return {e["name"]: e["value"] if "value" in e else f"<{next(iter(e['valueFrom']))}>" for e in container["env"]}


def test_k8s_configmap_loads(tmp_path):
    cfg = k8s_config(tmp_path)
    assert cfg.tables and cfg.metrics.port
    assert cfg.scylla.password == "", "passwords come from the Secret, never the ConfigMap"


def test_k8s_env_maps_to_config_keys(tmp_path):
    dep, c = k8s_container()
    env = k8s_env(c)
    assert [p for p in (env_var_problem(v) for v in env) if p] == []
    cfg = k8s_config(tmp_path, env)
    assert cfg.relay.replica_id == env["RELAY_RELAY__REPLICA_ID"]
    password = next(e for e in c["env"] if e["name"] == "RELAY_SCYLLA__PASSWORD")
    assert "secretKeyRef" in password["valueFrom"]
    # RELAY_CONFIG points into the ConfigMap volume, at a key the ConfigMap has.
    spec = dep["spec"]["template"]["spec"]
    cm_volumes = {v["name"] for v in spec["volumes"] if "configMap" in v}
    mount = next(m for m in c["volumeMounts"] if m["name"] in cm_volumes)
    assert os.path.dirname(env["RELAY_CONFIG"]) == mount["mountPath"]
    assert os.path.basename(env["RELAY_CONFIG"]) in k8s_doc("configmap.yaml", "ConfigMap")["data"]
    # The prometheus_client multiprocess directory is a writable emptyDir.
    mp = next(m for m in c["volumeMounts"] if m["mountPath"] == env["PROMETHEUS_MULTIPROC_DIR"])
    assert "emptyDir" in next(v for v in spec["volumes"] if v["name"] == mp["name"])


def test_k8s_ports_probes_and_shutdown_agree(tmp_path):
    dep, c = k8s_container()
    cfg = k8s_config(tmp_path, k8s_env(c))
    spec = dep["spec"]["template"]["spec"]
    # Three members: a kill or a drain leaves two to take over its slots.
    assert dep["spec"]["replicas"] == 3
    assert dep["spec"]["replicas"] <= cfg.leases.slots
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports["metrics"] == cfg.metrics.port

    def resolve(port):
        return ports[port] if isinstance(port, str) else port

    served = http_paths(HTTPSERVER_PY.read_text())
    assert c["livenessProbe"]["httpGet"]["path"] == "/health"
    assert c["readinessProbe"]["httpGet"]["path"] == "/ready"
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        if probe in c:
            assert resolve(c[probe]["httpGet"]["port"]) == cfg.metrics.port, probe
            assert c[probe]["httpGet"]["path"] in served, f"{probe}: relay/httpserver.py does not serve it"
    annotations = dep["spec"]["template"]["metadata"].get("annotations", {})
    if "prometheus.io/port" in annotations:
        assert int(annotations["prometheus.io/port"]) == cfg.metrics.port
        assert annotations.get("prometheus.io/path", "/metrics") in served
    # The drain (bounded by shutdown_timeout_seconds) and leaving the group end before SIGKILL.
    assert spec["terminationGracePeriodSeconds"] >= cfg.relay.shutdown_timeout_seconds + 10
    assert c["resources"]["requests"] and c["resources"]["limits"]
    svc = k8s_doc("service.yaml", "Service")
    assert [resolve(p["targetPort"]) for p in svc["spec"]["ports"]] == [cfg.metrics.port]
    # Draining and not-yet-assigned pods are not ready, and their metrics matter most then.
    assert svc["spec"].get("publishNotReadyAddresses") is True
    labels = dep["spec"]["template"]["metadata"]["labels"]
    assert svc["spec"]["selector"].items() <= labels.items()
    pdb = k8s_doc("pdb.yaml", "PodDisruptionBudget")
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    # One member in motion at a time, and the other two keep serving.
    assert pdb["spec"]["maxUnavailable"] == 1 and "minAvailable" not in pdb["spec"]
    assert dep["spec"]["selector"]["matchLabels"].items() <= labels.items()


def test_k8s_leases_fit_the_broker_and_the_replicas(tmp_path):
    dep, c = k8s_container()
    cfg = k8s_config(tmp_path, k8s_env(c))
    low, high = BROKER_SESSION_TIMEOUT_RANGE_S
    assert low <= cfg.leases.duration_seconds <= high
    # Kafka's rule of thumb: at least three heartbeats per session.
    assert cfg.leases.renew_seconds * 3 <= cfg.leases.duration_seconds
    assert cfg.leases.static_membership is False, "the Deployment's pod names change on every restart"


def test_k8s_statefulset_is_the_deployment_with_static_membership(tmp_path):
    dep, _ = k8s_container()
    sts = k8s_doc("statefulset/statefulset.yaml", "StatefulSet")
    assert sts["metadata"]["name"] == dep["metadata"]["name"]
    assert sts["spec"]["replicas"] == dep["spec"]["replicas"]
    assert sts["spec"]["selector"] == dep["spec"]["selector"]
    # Same pod, except the variables that turn static membership on.
    sts_pod, dep_pod = sts["spec"]["template"], dep["spec"]["template"]
    sts_c = next(c for c in sts_pod["spec"]["containers"] if c["name"] == "relay")
    dep_c = next(c for c in dep_pod["spec"]["containers"] if c["name"] == "relay")
    extra = [e for e in sts_c["env"] if e not in dep_c["env"]]
    assert [e for e in sts_c["env"] if e not in extra] == dep_c["env"]
    assert {e["name"] for e in extra} == {"RELAY_LEASES__STATIC_MEMBERSHIP", "RELAY_LEASES__DURATION_SECONDS"}

    def without_env(pod: dict) -> dict:
        pod = json.loads(json.dumps(pod))
        for cont in pod["spec"]["containers"]:
            cont.pop("env", None)
        return pod

    assert without_env(sts_pod) == without_env(dep_pod)
    env = k8s_env(sts_c)
    assert [p for p in (env_var_problem(v) for v in env) if p] == []
    cfg = k8s_config(tmp_path, env)
    assert cfg.leases.static_membership is True
    # group.instance.id = replica id = the pod name, which the StatefulSet keeps stable.
    replica = next(e for e in sts_c["env"] if e["name"] == "RELAY_RELAY__REPLICA_ID")
    assert replica["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    low, high = BROKER_SESSION_TIMEOUT_RANGE_S
    assert low <= cfg.leases.duration_seconds <= high
    assert cfg.leases.renew_seconds * 3 <= cfg.leases.duration_seconds
    assert sts_pod["spec"]["terminationGracePeriodSeconds"] > cfg.relay.shutdown_timeout_seconds
    # serviceName names the Service of service.yaml, which selects these pods.
    svc = k8s_doc("service.yaml", "Service")
    assert sts["spec"]["serviceName"] == svc["metadata"]["name"]
    assert svc["spec"]["selector"].items() <= sts_pod["metadata"]["labels"].items()


def test_k8s_servicemonitor_scrapes_the_service():
    svc = k8s_doc("service.yaml", "Service")
    sm = k8s_doc("monitoring/servicemonitor.yaml", "ServiceMonitor")
    assert sm["apiVersion"] == "monitoring.coreos.com/v1"
    assert sm["spec"]["selector"]["matchLabels"].items() <= svc["metadata"]["labels"].items()
    port_names = {p["name"] for p in svc["spec"]["ports"]}
    served = http_paths(HTTPSERVER_PY.read_text())
    assert sm["spec"]["endpoints"]
    for ep in sm["spec"]["endpoints"]:
        assert ep["port"] in port_names
        assert ep.get("path", "/metrics") in served
    # No other Service under deploy/k8s matches: each pod is scraped once.
    services = [d for _, d in k8s_resources() if d["kind"] == "Service"]
    matching = [d for d in services if sm["spec"]["selector"]["matchLabels"].items()
                <= d["metadata"].get("labels", {}).items()]
    assert len(matching) == 1


def test_k8s_hpa_scales_the_deployment_on_an_adapter_metric(tmp_path):
    dep, c = k8s_container()
    cfg = k8s_config(tmp_path, k8s_env(c))
    hpa = k8s_doc("autoscaling/hpa.yaml", "HorizontalPodAutoscaler")
    ref = hpa["spec"]["scaleTargetRef"]
    assert (ref["apiVersion"], ref["kind"], ref["name"]) == (dep["apiVersion"], dep["kind"], dep["metadata"]["name"])
    assert hpa["spec"]["minReplicas"] >= dep["spec"]["replicas"]
    # Replicas beyond the slots would own nothing.
    assert hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"] <= cfg.leases.slots
    # Each scale step is a rebalance: scale-down waits long.
    assert hpa["spec"]["behavior"]["scaleDown"]["stabilizationWindowSeconds"] >= 300
    values = load_yaml(K8S / "autoscaling" / "prometheus-adapter-values.yaml")
    served = {r["name"]["as"]: r for r in values["rules"]["custom"]}
    for m in hpa["spec"]["metrics"]:
        assert m["type"] == "Pods"
        name = m["pods"]["metric"]["name"]
        assert name in served, f"prometheus-adapter-values.yaml serves no {name}"
        rule = served[name]
        assert rule["resources"]["overrides"]["pod"] == {"resource": "pod"}
        assert rule["resources"]["overrides"]["namespace"] == {"resource": "namespace"}
        series = promql_metric_names(rule["seriesQuery"])
        assert metric_problems("adapter seriesQuery", rule["seriesQuery"]) == []
        assert all(METRICS[n] == "gauge" for n in series), "average over pods needs a gauge"
        assert re.fullmatch(rule["name"]["matches"], next(iter(series)))
        assert "<<.Series>>" in rule["metricsQuery"] and "<<.GroupBy>>" in rule["metricsQuery"]
        assert "<<.LabelMatchers>>" in rule["metricsQuery"]


def test_k8s_manifests_match_the_kubernetes_schemas():
    """Every object under deploy/k8s against the OpenAPI schemas of K8S_VERSION, unknown fields
    refused; the Prometheus Operator's CRDs are not in them (checked above by hand)."""
    import kubernetes_validate  # a dev dependency: its wheel carries the schemas, no download

    resources = k8s_resources()
    kinds = {d["kind"] for _, d in resources}
    assert {"ConfigMap", "Deployment", "StatefulSet", "Service", "PodDisruptionBudget",
            "HorizontalPodAutoscaler", "ServiceMonitor"} <= kinds
    problems = []
    for path, doc in resources:
        if doc["apiVersion"].startswith("monitoring.coreos.com/"):
            continue
        try:
            kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            problems.append(f"{path}: {doc['kind']}: {exc.message} at {list(exc.path)}")
    assert problems == []


def test_k8s_command_is_a_relay_command():
    _, c = k8s_container()
    argv = k8s_argv(c)
    assert argv[:2] == ["relay", "run"]
    assert command_problems(argv) == []


# --------------------------------------------------------------------------- against the real CLI


def all_relay_argvs() -> list[list[str]]:
    argvs = [effective_argv(s) for s in relay_image_services(compose()).values()]
    df = dockerfile()
    argvs.append(exec_form(df["ENTRYPOINT"][-1]) + exec_form(df["CMD"][-1]))
    argvs.append(k8s_argv(k8s_container()[1]))
    return argvs


def test_commands_parse_with_the_cli():
    """Where a command is already built, the real parser must accept the arguments used here."""
    from relay import cli

    parser = cli.build_parser()
    subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for argv in all_relay_argvs():
        if argv[1] not in subparsers.choices:
            continue  # not built yet; DESIGN §8 is checked by command_problems
        try:
            parser.parse_args(argv[1:])
        except SystemExit:
            pytest.fail(f"relay's parser rejects {' '.join(argv)}")


# --------------------------------------------------------------------------- the checks can fail


def test_checks_catch_mistakes(tmp_path):
    # env: typo, single underscore (silently ignored by the loader), unknown section, bad value
    assert env_var_problem("RELAY_KAFKA__BOOTSTRAP_SERVER")
    assert env_var_problem("RELAY_KAFKA_BOOTSTRAP_SERVERS")
    assert env_var_problem("RELAY_METRIC__PORT")
    assert env_var_problem("RELAY_TABLES__NAME")
    assert env_var_problem("RELAY_TABLES__0__COLUMNS__NOPE")
    assert env_var_problem("RELAY_KAFKA__PRODUCER__LINGER_MS") is None
    assert env_var_problem("RELAY_TABLES__0__COLUMNS__EVENT_ID") is None
    assert env_var_problem("RELAY_METRICS__PORT") is None
    assert env_problems({"RELAY_METRICS__PORT": "nine"}, COMPOSE_TOML)
    # ports
    assert port_problems("x", {"ports": ["9042:9042"]})
    assert port_problems("x", {"ports": ["0.0.0.0:9042:9042"]})
    assert port_problems("x", {"ports": [{"target": 9042, "published": 9042}]})
    assert port_problems("x", {"ports": ["127.0.0.1:9100:9100"], "deploy": {"replicas": 2}})
    assert port_problems("x", {"ports": ["127.0.0.1:9042:9042"]}) == []
    # host paths
    assert host_path_problems({"services": {"x": {"volumes": ["./deploy/nope.yml:/etc/x"]}}}, REPO)
    assert host_path_problems({"services": {"x": {"env_file": ".env.missing"}}}, REPO)
    assert host_path_problems({"services": {"x": {"build": {"context": ".", "dockerfile": "Nope"}}}}, REPO)
    assert host_path_problems({"services": {"x": {"volumes": ["../outside:/x"]}}}, REPO)
    # commands
    assert command_problems(["relay", "relay", "run"])
    assert command_problems(["relay", "start"])
    assert command_problems(["relay", "schema"])
    assert command_problems(["relay", "dlq", "purge"])
    assert command_problems(["python", "-m", "relay", "run"])
    # metric names
    assert metric_problems("x", "rate(relay_events_sent_total[5m])")
    assert metric_problems("x", "relay_task_lag_seconds_bucket")  # a gauge has no buckets
    assert metric_problems("x", 'sum by (table) (relay_task_lag{table="a"})')
    assert metric_problems("x", "max by (table) (relay_task_lag_seconds) > 60") == []
    assert promql_metric_names(
        'histogram_quantile(0.99, sum by (le, table) (rate(relay_publish_latency_seconds_bucket'
        '{table=~"$table"}[$__rate_interval])))') == {"relay_publish_latency_seconds_bucket"}
    # Dockerfile parsing follows the last stage
    assert dockerfile_instructions("FROM a\nEXPOSE 1\nFROM b\nEXPOSE 2\n") == [("FROM", "b"), ("EXPOSE", "2")]
    assert parse_duration("1m30s") == 90
    # HTTP paths: only comparisons with `path`, not other strings of the server
    assert http_paths('if path == "/ready":\n elif path=="/live":\n x = "/status"') == {"/ready", "/live"}
    assert compose_interpolate("s/$${keyspace}/ ${A:-x} $B", {"B": "b"}) == "s/${keyspace}/ x b"
