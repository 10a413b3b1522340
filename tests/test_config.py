"""`relay/config.py`: the DESIGN §7 file, environment overrides, error messages, secrets, retry presets."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from relay import config
from relay.config import Config, RetryConfig
from relay.errors import ConfigError, UserError

# DESIGN §7, verbatim: these key names are a contract.
EXAMPLE = """
[scylla]
contact_points = ["127.0.0.1"]
port = 9042
relay_keyspace = "relay"
cdc_metadata_keyspace = "system_distributed"
consistency = "QUORUM"

[[tables]]
name = "shop.outbox"                      # keyspace.table with CDC enabled
topic = "outbox.event.{aggregate_type}"   # any column alias of [tables.columns] may be used
operations = ["insert"]                   # insert | update
[tables.columns]                          # alias = column name in the table
event_id = "id"
aggregate_type = "aggregate_type"
aggregate_id = "aggregate_id"
event_type = "event_type"
payload = "payload"
headers = []                              # extra columns copied into record headers

[kafka]
bootstrap_servers = "127.0.0.1:9092"
[kafka.producer]                          # any librdkafka producer property
"linger.ms" = 20

[redis]
url = "redis://127.0.0.1:6379/0"
dedup_ttl_seconds = 3600
on_outage = "fail-open"                   # or "pause"

[relay]
workers = 0                               # 0 = CPU count
window_seconds = 10
confidence_seconds = 10
poll_interval_seconds = 0.5
start_from = "earliest"                   # earliest | now | lookback:<seconds>
shutdown_timeout_seconds = 30

[metrics]
host = "0.0.0.0"
port = 9100
"""

MINIMAL = """
[kafka]
bootstrap_servers = "127.0.0.1:9092"
"""


def write(tmp_path: Path, text: str, name: str = "relay.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def load_text(tmp_path: Path, text: str, environ: dict[str, str] | None = None, **kw) -> Config:
    return config.load(write(tmp_path, text), environ=environ or {}, **kw)


def error_of(tmp_path: Path, text: str, environ: dict[str, str] | None = None, **kw) -> str:
    with pytest.raises(ConfigError) as info:
        load_text(tmp_path, text, environ, **kw)
    return str(info.value)


# --------------------------------------------------------------------------- the example file

def test_design_example_loads_with_its_values(tmp_path):
    cfg = load_text(tmp_path, EXAMPLE)
    assert cfg.source == str(tmp_path / "relay.toml")
    assert cfg.scylla.contact_points == ("127.0.0.1",)
    assert cfg.scylla.port == 9042 and isinstance(cfg.scylla.port, int)
    assert cfg.scylla.relay_keyspace == "relay"
    assert cfg.scylla.cdc_metadata_keyspace == "system_distributed"
    assert cfg.scylla.consistency == "QUORUM"
    assert len(cfg.tables) == 1
    t = cfg.tables[0]
    assert (t.name, t.keyspace, t.table) == ("shop.outbox", "shop", "outbox")
    assert t.topic == "outbox.event.{aggregate_type}"
    assert t.operations == ("insert",)
    assert dataclasses.astuple(t.columns) == ("id", "aggregate_type", "aggregate_id", "event_type", "payload", ())
    assert cfg.kafka.bootstrap_servers == "127.0.0.1:9092"
    assert dict(cfg.kafka.producer) == {"linger.ms": 20}
    assert (cfg.redis.url, cfg.redis.dedup_ttl_seconds, cfg.redis.on_outage) == (
        "redis://127.0.0.1:6379/0", 3600, "fail-open")
    r = cfg.relay
    assert r.workers == 0 and cfg.worker_count >= 1
    assert (r.window_seconds, r.confidence_seconds, r.poll_interval_seconds) == (10.0, 10.0, 0.5)
    assert isinstance(r.window_seconds, float)
    assert r.start_from == "earliest"
    assert r.shutdown_timeout_seconds == 30.0
    assert (cfg.metrics.host, cfg.metrics.port) == ("0.0.0.0", 9100)
    assert cfg.table("shop.outbox") is t


def test_example_is_frozen(tmp_path):
    cfg = load_text(tmp_path, EXAMPLE)
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.kafka.bootstrap_servers = "elsewhere:9092"  # type: ignore[misc]


def test_metrics_port_0_means_any_free_port(tmp_path):
    # Tests run many relays at once: each binds a port of the kernel's choosing and logs it.
    assert load_text(tmp_path, f"{MINIMAL}\n[metrics]\nport = 0\n").metrics.port == 0


def test_defaults_from_a_minimal_file(tmp_path):
    cfg = load_text(tmp_path, MINIMAL)
    assert cfg.tables == ()
    assert cfg.scylla.relay_keyspace == "relay"
    assert cfg.scylla.cdc_metadata_keyspace == "system_distributed"
    assert cfg.scylla.tablets_metadata_keyspace == "system"
    assert cfg.scylla.bypass_cache == "auto"
    assert cfg.redis.on_outage == "fail-open"
    assert cfg.relay.start_from == "earliest"
    assert cfg.retry.policy() == (5, 0.1, 0.5)


def test_table_defaults(tmp_path):
    cfg = load_text(tmp_path, MINIMAL + '\n[[tables]]\nname = "shop.outbox"\n')
    t = cfg.tables[0]
    assert t.topic == "outbox.event.{aggregate_type}"
    assert t.operations == ("insert",)
    assert t.columns.event_id == "id" and t.columns.headers == ()


def test_unknown_table_lookup_names_the_configured_ones(tmp_path):
    cfg = load_text(tmp_path, EXAMPLE)
    with pytest.raises(ConfigError, match=r"no \[\[tables\]\] entry named 'shop\.other' \(configured: shop\.outbox\)"):
        cfg.table("shop.other")


# --------------------------------------------------------------------------- environment

def test_env_overrides_parse_int_float_bool_and_str(tmp_path):
    cfg = load_text(tmp_path, EXAMPLE, {
        "RELAY_SCYLLA__PORT": "19042",
        "RELAY_RELAY__WINDOW_SECONDS": "2.5",
        "RELAY_RELAY__WORKERS": "3",
        "RELAY_KAFKA__CREATE_TOPICS": "false",
        "RELAY_DLQ__AUTO_REPLAY": "no",
        "RELAY_KAFKA__BOOTSTRAP_SERVERS": "kafka-1:9092,kafka-2:9092",
        "RELAY_REDIS__ON_OUTAGE": "pause",
    })
    assert cfg.scylla.port == 19042 and isinstance(cfg.scylla.port, int)
    assert cfg.relay.window_seconds == 2.5
    assert cfg.relay.workers == 3 and cfg.worker_count == 3
    assert cfg.kafka.create_topics is False
    assert cfg.dlq.auto_replay is False
    assert cfg.kafka.bootstrap_servers == "kafka-1:9092,kafka-2:9092"
    assert cfg.redis.on_outage == "pause"
    # Untouched keys keep the file's values.
    assert cfg.scylla.consistency == "QUORUM" and cfg.relay.poll_interval_seconds == 0.5


@pytest.mark.parametrize("value", ["10.0.0.1,10.0.0.2", " 10.0.0.1 , 10.0.0.2 ", '["10.0.0.1", "10.0.0.2"]'])
def test_env_list_parsing(tmp_path, value):
    cfg = load_text(tmp_path, EXAMPLE, {"RELAY_SCYLLA__CONTACT_POINTS": value})
    assert cfg.scylla.contact_points == ("10.0.0.1", "10.0.0.2")


def test_env_alone_is_a_config(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no ./relay.toml here
    cfg = config.load(None, environ={"RELAY_KAFKA__BOOTSTRAP_SERVERS": "k:9092", "RELAY_TABLES__0__NAME": "a.b"})
    assert cfg.source == "environment"
    assert cfg.kafka.bootstrap_servers == "k:9092"
    assert [t.name for t in cfg.tables] == ["a.b"]


def test_relay_config_variable_names_the_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = write(tmp_path, EXAMPLE, "elsewhere.toml")
    cfg = config.load(None, environ={"RELAY_CONFIG": str(path)})
    assert cfg.source == str(path) and cfg.tables[0].name == "shop.outbox"


def test_env_table_overrides(tmp_path):
    cfg = load_text(tmp_path, EXAMPLE, {
        "RELAY_TABLES__0__NAME": "billing.outbox",
        "RELAY_TABLES__0__OPERATIONS": "insert,update",
        "RELAY_TABLES__0__COLUMNS__HEADERS": "trace_id,tenant",
        "RELAY_TABLES__0__COLUMNS__EVENT_ID": "event_uuid",
        "RELAY_TABLES__1__NAME": "shop.outbox2",
        "RELAY_TABLES__1__TOPIC": "events.{event_type}",
    })
    first, second = cfg.tables
    assert first.name == "billing.outbox"
    assert first.operations == ("insert", "update")
    assert first.columns.headers == ("trace_id", "tenant")
    assert first.columns.event_id == "event_uuid"
    assert first.columns.payload == "payload"  # the file's other columns stay
    assert first.topic == "outbox.event.{aggregate_type}"
    assert second.name == "shop.outbox2" and second.topic == "events.{event_type}"
    assert second.operations == ("insert",)


def test_env_producer_property_names_use_dots(tmp_path):
    cfg = load_text(tmp_path, EXAMPLE, {"RELAY_KAFKA__PRODUCER__LINGER_MS": "5",
                                        "RELAY_KAFKA__PRODUCER__COMPRESSION_TYPE": "zstd"})
    producer = dict(cfg.kafka.producer)
    assert str(producer["linger.ms"]) == "5"
    assert producer["compression.type"] == "zstd"
    assert "linger_ms" not in producer and "LINGER_MS" not in producer


def test_env_producer_properties_reach_librdkafka_settings(tmp_path):
    from relay.connect import producer_config

    cfg = load_text(tmp_path, EXAMPLE, {"RELAY_KAFKA__PRODUCER__LINGER_MS": "5"})
    conf = producer_config(cfg)
    assert str(conf["linger.ms"]) == "5"
    assert conf["enable.idempotence"] is True and conf["acks"] == "all"


def test_env_producer_table_as_json(tmp_path):
    cfg = load_text(tmp_path, EXAMPLE, {"RELAY_KAFKA__PRODUCER": json.dumps({"batch.size": 1000})})
    assert dict(cfg.kafka.producer) == {"batch.size": 1000}


@pytest.mark.parametrize("var,value,key,expect", [
    ("RELAY_SCYLLA__PORT", "ninety", "scylla.port", "expected an integer"),
    ("RELAY_RELAY__WINDOW_SECONDS", "soon", "relay.window_seconds", "expected a number"),
    ("RELAY_KAFKA__CREATE_TOPICS", "maybe", "kafka.create_topics", "expected true or false"),
    ("RELAY_SCYLLA__NO_SUCH_KEY", "1", "scylla.no_such_key", "unknown key"),
])
def test_env_errors_name_the_key(tmp_path, var, value, key, expect):
    msg = error_of(tmp_path, EXAMPLE, {var: value})
    assert f": {key}: {expect}" in msg, msg
    assert "\n" not in msg


def test_malformed_env_variable_is_named(tmp_path):
    msg = error_of(tmp_path, EXAMPLE, {"RELAY_SCYLLA__SSL__DEEP__KEY": "1"})
    assert "RELAY_SCYLLA__SSL__DEEP__KEY" in msg and "RELAY_<SECTION>__<KEY>" in msg


def test_unrelated_relay_variables_are_ignored(tmp_path):
    cfg = load_text(tmp_path, EXAMPLE, {"RELAY_LOG_LEVEL": "DEBUG", "RELAY_STACK_CASSANDRA_PORT": "1", "PATH": "/x"})
    assert cfg.scylla.port == 9042


# --------------------------------------------------------------------------- errors

def test_missing_bootstrap_servers_message_is_exact(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write(tmp_path, '[[tables]]\nname = "shop.outbox"\n')
    with pytest.raises(ConfigError) as info:
        config.load("relay.toml", environ={})
    assert str(info.value) == "relay.toml: kafka.bootstrap_servers: required"
    assert isinstance(info.value, UserError)


def test_dot_relay_toml_is_the_default_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write(tmp_path, "[kafka]\n")
    with pytest.raises(ConfigError, match=r"^relay\.toml: kafka\.bootstrap_servers: required$"):
        config.load(None, environ={})


def test_missing_file(tmp_path):
    path = tmp_path / "nope.toml"
    with pytest.raises(ConfigError) as info:
        config.load(path, environ={})
    assert str(info.value) == f"{path}: no such config file"


def test_invalid_toml_names_file_and_line(tmp_path):
    msg = error_of(tmp_path, "[kafka\nbootstrap_servers = 'x'\n")
    assert msg.startswith(f"{tmp_path / 'relay.toml'}: invalid TOML: ")
    assert "line 1" in msg


@pytest.mark.parametrize("text,key,expect", [
    (MINIMAL + "[scylla]\nport = 9042\nhostname = 'x'\n", "scylla.hostname", "unknown key"),
    (MINIMAL + "[scyla]\nport = 9042\n", "scyla", "unknown key"),
    (MINIMAL + "[[tables]]\nname = 'a.b'\ntopics = 'x'\n", "tables[0].topics", "unknown key"),
    (MINIMAL + "[[tables]]\nname = 'a.b'\n[tables.columns]\nid = 'x'\n", "tables[0].columns.id", "unknown key"),
    (MINIMAL + "[scylla]\nport = 'abc'\n", "scylla.port", "expected an integer, got 'abc'"),
    (MINIMAL + "[scylla]\nport = 9042.5\n", "scylla.port", "expected an integer"),
    (MINIMAL + "[scylla]\nport = true\n", "scylla.port", "expected an integer"),
    (MINIMAL + "[scylla]\ncontact_points = 7\n", "scylla.contact_points", "expected a list"),
    (MINIMAL + "[scylla]\ncontact_points = [1]\n", "scylla.contact_points[0]", "expected a string"),
    (MINIMAL + "[relay]\nwindow_seconds = 'long'\n", "relay.window_seconds", "expected a number"),
    (MINIMAL + "[dlq]\nauto_replay = 'perhaps'\n", "dlq.auto_replay", "expected true or false"),
    (MINIMAL + "[redis]\nurl = 6379\n", "redis.url", "expected a string"),
    (MINIMAL + "tables = 'a.b'\n", "kafka.tables", "unknown key"),  # after [kafka], the key is kafka's
])
def test_wrong_keys_and_types_name_file_and_key(tmp_path, text, key, expect):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        config.load(path, environ={})
    msg = str(info.value)
    assert msg.startswith(f"{path}: {key}: {expect}"), msg


def test_numeric_strings_are_accepted_for_numbers(tmp_path):
    cfg = load_text(tmp_path, MINIMAL + "[scylla]\nport = '9043'\n[relay]\nwindow_seconds = 3\n")
    assert cfg.scylla.port == 9043 and cfg.relay.window_seconds == 3.0


def test_tables_must_be_an_array(tmp_path):
    msg = error_of(tmp_path, 'tables = "a.b"\n' + MINIMAL)
    assert msg.startswith(f"{tmp_path / 'relay.toml'}: tables: ") and "[[tables]]" in msg


@pytest.mark.parametrize("section,key,value,expect", [
    ("relay", "start_from", '"yesterday"', "use earliest, now or lookback:<seconds>"),
    ("relay", "start_from", '"lookback:"', "use earliest, now or lookback:<seconds>"),
    ("relay", "start_from", '"lookback:-5"', "use earliest, now or lookback:<seconds>"),
    ("redis", "on_outage", '"ignore"', "use fail-open or pause"),
    ("redis", "url", '"http://localhost"', "must start with redis://"),
    ("redis", "dedup_ttl_seconds", "0", "must be > 0"),
    ("scylla", "consistency", '"MOST"', "is not one of"),
    ("scylla", "relay_keyspace", '"my-relay"', "not a valid keyspace name"),
    ("scylla", "relay_keyspace", '"Relay_Prod"', "'Relay_Prod': use lowercase ('relay_prod')"),
    ("scylla", "bypass_cache", '"sometimes"', "must be auto, true or false"),
    ("scylla", "contact_points", "[]", "required"),
    ("relay", "workers", "-1", "must be >= 0"),
    ("relay", "window_seconds", "0", "must be > 0"),
    ("relay", "confidence_seconds", "-1", "must be >= 1.0"),
    ("relay", "confidence_seconds", "0.2", "must be >= 1.0"),
    ("scylla", "request_timeout_seconds", "20", "at most half of relay.heartbeat_timeout_seconds"),
    ("redis", "socket_timeout_seconds", "0", "must be > 0"),
    ("dlq", "order", '"never"', "use skip or park-aggregate"),
    ("dlq", "max_attempts", "0", "must be >= 1"),
    ("dlq", "replay_interval_seconds", "0", "must be > 0"),
    ("retry", "preset", '"reckless"', "use aggressive or conservative"),
    ("breaker", "fail_max", "0", "must be >= 1"),
    ("metrics", "port", "70000", "must be a TCP port"),
    ("metrics", "port", "-1", "must be a TCP port"),
])
def test_bad_values_name_file_and_key(tmp_path, section, key, value, expect):
    msg = error_of(tmp_path, f"{MINIMAL}\n[{section}]\n{key} = {value}\n")
    assert msg.startswith(f"{tmp_path / 'relay.toml'}: {section}.{key}: "), msg
    assert expect in msg, msg


@pytest.mark.parametrize("value", ["earliest", "now", "lookback:600", "lookback:0.5"])
def test_good_start_from(tmp_path, value):
    cfg = load_text(tmp_path, f'{MINIMAL}\n[relay]\nstart_from = "{value}"\n')
    kind, seconds = config.parse_start_from(cfg.relay.start_from)
    assert kind == value.split(":")[0]
    assert seconds == (float(value.split(":")[1]) if ":" in value else 0.0)


@pytest.mark.parametrize("name", ["outbox", "shop.", ".outbox", "shop.out.box", "shop.out-box", "1shop.outbox", ""])
def test_bad_table_name(tmp_path, name):
    msg = error_of(tmp_path, f'{MINIMAL}\n[[tables]]\nname = "{name}"\n')
    assert msg.startswith(f"{tmp_path / 'relay.toml'}: tables[0].name: "), msg
    assert "expected keyspace.table" in msg


def test_bad_table_name_in_second_table_names_its_index(tmp_path):
    msg = error_of(tmp_path, f'{MINIMAL}\n[[tables]]\nname = "a.b"\n[[tables]]\nname = "nodot"\n')
    assert ": tables[1].name: 'nodot': expected keyspace.table" in msg


def test_unknown_topic_placeholder(tmp_path):
    msg = error_of(tmp_path, f'{MINIMAL}\n[[tables]]\nname = "a.b"\ntopic = "events.{{tenant}}"\n')
    assert msg.startswith(f"{tmp_path / 'relay.toml'}: tables[0].topic: unknown placeholder {{tenant}}"), msg
    assert "aggregate_type" in msg  # says what may be used


@pytest.mark.parametrize("topic", ["events.{event_type}", "{aggregate_type}.{aggregate_id}", "fixed-topic"])
def test_known_topic_placeholders(tmp_path, topic):
    cfg = load_text(tmp_path, f'{MINIMAL}\n[[tables]]\nname = "a.b"\ntopic = "{topic}"\n')
    assert cfg.tables[0].topic == topic


def test_duplicate_table(tmp_path):
    msg = error_of(tmp_path, f'{MINIMAL}\n[[tables]]\nname = "a.b"\n[[tables]]\nname = "c.d"\n'
                             f'[[tables]]\nname = "a.b"\n')
    assert msg.startswith(f"{tmp_path / 'relay.toml'}: tables[2].name: "), msg
    assert "a.b is configured twice" in msg


@pytest.mark.parametrize("ops,expect", [('["insert", "delete"]', "'delete': use insert and/or update"),
                                        ("[]", "at least one operation")])
def test_bad_operations(tmp_path, ops, expect):
    msg = error_of(tmp_path, f'{MINIMAL}\n[[tables]]\nname = "a.b"\noperations = {ops}\n')
    assert f": tables[0].operations: {expect}" in msg, msg


def test_validate_false_skips_value_checks_but_not_types(tmp_path):
    cfg = load_text(tmp_path, '[redis]\non_outage = "ignore"\n', validate=False)
    assert cfg.redis.on_outage == "ignore"
    with pytest.raises(ConfigError, match="scylla.port: expected an integer"):
        load_text(tmp_path, '[scylla]\nport = "x"\n', validate=False)


# --------------------------------------------------------------------------- secrets

def test_redacted_masks_passwords(tmp_path):
    cfg = load_text(tmp_path, EXAMPLE, {
        "RELAY_SCYLLA__USERNAME": "relay",
        "RELAY_SCYLLA__PASSWORD": "hunter2-cql",
        "RELAY_KAFKA__PRODUCER__SASL_PASSWORD": "hunter2-kafka",
    })
    assert cfg.scylla.password == "hunter2-cql"  # the value itself is usable
    assert cfg.kafka.producer["sasl.password"] == "hunter2-kafka"
    red = cfg.redacted()
    assert red["scylla"]["password"] == "***"
    assert red["scylla"]["username"] == "relay"
    assert red["kafka"]["producer"]["sasl.password"] == "***"
    assert red["kafka"]["producer"]["linger.ms"] == 20
    text = json.dumps(red)
    assert "hunter2" not in text
    # The rest is intact and plain data (printable as JSON).
    assert red["tables"][0]["name"] == "shop.outbox"
    assert red["scylla"]["contact_points"] == ["127.0.0.1"]


def test_redacted_leaves_empty_password_empty(tmp_path):
    red = load_text(tmp_path, EXAMPLE).redacted()
    assert red["scylla"]["password"] == ""


# --------------------------------------------------------------------------- retry

def test_retry_presets():
    assert RetryConfig().policy() == (5, 0.1, 0.5)
    assert RetryConfig(preset="aggressive").policy() == (5, 0.1, 0.5)
    assert RetryConfig(preset="conservative").policy() == (3, 1.0, 10.0)


def test_retry_explicit_values_override_the_preset():
    assert RetryConfig(preset="conservative", attempts=7).policy() == (7, 1.0, 10.0)
    assert RetryConfig(preset="aggressive", wait_initial_seconds=0.2).policy() == (5, 0.2, 0.5)
    assert RetryConfig(preset="conservative", attempts=2, wait_initial_seconds=0.5,
                       wait_max_seconds=4.0).policy() == (2, 0.5, 4.0)


def test_retry_section_from_file_and_env(tmp_path):
    cfg = load_text(tmp_path, MINIMAL + '[retry]\npreset = "conservative"\nwait_max_seconds = 30\n',
                    {"RELAY_RETRY__ATTEMPTS": "9"})
    assert cfg.retry.policy() == (9, 1.0, 30.0)


@pytest.mark.parametrize("var,value", [
    ("RELAY_REDIS__URL", "redis://:hunter2-redis@127.0.0.1:6379/0"),
    ("RELAY_KAFKA__PRODUCER__SSL_KEYSTORE_PASSWORD", "hunter2-keystore"),
], ids=["redis-url-password", "ssl-keystore-password"])
def test_redacted_masks_other_secrets(tmp_path, var, value):
    red = load_text(tmp_path, EXAMPLE, {var: value}).redacted()
    assert "hunter2" not in json.dumps(red)


# ---------------------------------------------------------------- [leases] (DESIGN §5b)
def test_leases_defaults_follow_the_relay_keyspace(tmp_path):
    cfg = load_text(tmp_path, EXAMPLE)
    assert cfg.leases == config.LeasesConfig()
    assert (cfg.leases.duration_seconds, cfg.leases.renew_seconds, cfg.leases.slots) == (10.0, 3.0, 64)
    ks = cfg.scylla.relay_keyspace
    assert cfg.leases_group_id == f"relay.{ks}" and cfg.leases_topic == f"relay.slots.{ks}"


def test_leases_env_overrides(tmp_path):
    cfg = load_text(tmp_path, EXAMPLE, {"RELAY_LEASES__DURATION_SECONDS": "12", "RELAY_LEASES__SLOTS": "8",
                                        "RELAY_LEASES__GROUP_ID": "g1", "RELAY_LEASES__TOPIC": "t1",
                                        "RELAY_LEASES__STATIC_MEMBERSHIP": "true"})
    assert cfg.leases.duration_seconds == 12.0 and cfg.leases.slots == 8 and cfg.leases.static_membership
    assert cfg.leases_group_id == "g1" and cfg.leases_topic == "t1"


@pytest.mark.parametrize(("env", "needle"), [
    ({"RELAY_LEASES__RENEW_SECONDS": "5"}, "leases.renew_seconds: 5.0s must be > 0 and less than half"),
    ({"RELAY_LEASES__RENEW_SECONDS": "0"}, "leases.renew_seconds"),
    ({"RELAY_LEASES__SLOTS": "0"}, "leases.slots: 0: must be 1..1024"),
    ({"RELAY_LEASES__SLOTS": "2000"}, "leases.slots: 2000: must be 1..1024"),
    ({"RELAY_LEASES__DURATION_SECONDS": "0.5"}, "leases.duration_seconds: 0.5: must be 1..1800"),
    ({"RELAY_LEASES__TOPIC": "bad topic"}, "leases.topic: 'bad topic'"),
])
def test_leases_validation_is_one_line(tmp_path, env, needle):
    msg = error_of(tmp_path, EXAMPLE, env)
    assert needle in msg and "\n" not in msg
