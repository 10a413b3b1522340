"""Kafka outages at the Publisher, with relay's DEFAULT settings, against a Kafka of the test's own
(started and stopped with deploy/local/stack on ports reserved for it), so the shared one stays up.
Delivery is judged by consuming the topic after Kafka returns."""
from __future__ import annotations

import os
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pybreaker
import pytest
from conftest import REPO
from harness import ServerPort, consume_all, wait_for
from publisher_helpers import assert_in_order_once, config, events

from relay.publisher import PublishAborted, Publisher

pytestmark = pytest.mark.outage

OUTAGE_S = 90  # the outage the issue measured with default settings


@dataclass
class OwnKafka:
    dir: Path
    port: int
    controller_port: int

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def stack(self, action: str) -> None:
        env = dict(os.environ, RELAY_STACK_DIR=str(self.dir), RELAY_STACK_KAFKA_PORT=str(self.port),
                   RELAY_STACK_KAFKA_CONTROLLER_PORT=str(self.controller_port))
        res = subprocess.run([str(REPO / "deploy" / "local" / "stack"), action, "kafka"], env=env,
                             capture_output=True, text=True, timeout=300)
        assert res.returncode == 0, res.stdout + res.stderr


@pytest.fixture(scope="module")
def own_kafka(tmp_path_factory):
    ports = ServerPort(), ServerPort()
    kafka = OwnKafka(tmp_path_factory.mktemp("own-kafka"), ports[0].port, ports[1].port)
    kafka.stack("up")
    yield kafka
    kafka.stack("down")
    for port in ports:
        port.release()


@pytest.fixture
def up(own_kafka):
    """Kafka is up when the test starts and when it ends, whatever happened in between."""
    own_kafka.stack("up")
    yield own_kafka
    own_kafka.stack("up")


class Recorder:
    def __init__(self) -> None:
        self.acked: list[str] = []
        self.states: list[str] = []

    def on_acked(self, batch) -> None:
        self.acked += [e.event_id for e in batch]


def in_thread(fn, *args, **kw) -> tuple[threading.Thread, dict]:
    result: dict = {}

    def run():
        try:
            result["value"] = fn(*args, **kw)
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            result["error"] = exc
    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, result


@dataclass
class Outage:
    rec: Recorder
    pub: Publisher
    first: list  # delivered before Kafka stopped
    window: list  # being published while it is down
    thread: threading.Thread
    result: dict
    down_at: float  # monotonic


def publish_into_an_outage(up, topic: str, before: int, during: int, aggregates: int, **kw) -> Outage:
    """A publisher that delivered `before` events, then Kafka stops while a window of `during`
    events is being published (in a thread); returns once the breaker has opened."""
    rec = Recorder()
    pub = Publisher(config(up.bootstrap), on_acked=rec.on_acked, on_breaker_state=rec.states.append)
    first = events(topic, before, aggregates=aggregates)
    pub.publish(first)
    up.stack("down")
    down_at = time.monotonic()
    window = events(topic, during, aggregates=aggregates)
    thread, result = in_thread(pub.publish, window, **kw)
    wait_for(lambda: "open" in rec.states, 60, "the breaker to open")
    return Outage(rec, pub, first, window, thread, result, down_at)


def test_kafka_down_90s_with_default_settings_opens_the_breaker_and_loses_nothing(up, topic):
    o = publish_into_an_outage(up, topic, 300, 3_000, 30)
    rec, pub, before, during, thread, result = o.rec, o.pub, o.first, o.window, o.thread, o.result
    time.sleep(max(0.0, OUTAGE_S - (time.monotonic() - o.down_at)))  # the outage itself (the scenario's length)
    assert thread.is_alive() and not result, f"the window must wait for Kafka, not fail: {result}"
    up.stack("up")
    thread.join(300)
    assert not thread.is_alive()
    out = result["value"]
    assert len(out.delivered) == len(during) and not out.failed, "nothing failed by a timeout"
    # The half-open trial of a later window closes the breaker again.
    after = events(topic, 30, aggregates=30)

    def published() -> bool:
        try:
            pub.publish(after)
            return True
        except pybreaker.CircuitBreakerError:
            return False
    wait_for(published, 120, "the breaker to let a window through")
    assert rec.states[0] == "open" and rec.states[-1] == "closed", rec.states
    sent = before + during + after
    assert_in_order_once(sent, consume_all(up.bootstrap, [topic]), {e.event_id for e in sent})
    assert sorted(rec.acked) == sorted(e.event_id for e in sent)
    print(f"kafka down {OUTAGE_S}s, default settings: breaker transitions {rec.states}, "
          f"{len(sent)} delivered, 0 lost, 0 duplicates")


def test_should_abort_ends_the_wait_and_close_still_marks_late_acks(up, topic):
    stop = threading.Event()
    o = publish_into_an_outage(up, topic, 10, 500, 10, should_abort=stop.is_set)
    rec, pub, first, window, thread, result = o.rec, o.pub, o.first, o.window, o.thread, o.result
    stop.set()
    thread.join(30)
    assert isinstance(result.get("error"), PublishAborted), result
    up.stack("up")
    # The worker closes its publisher when it stops: reports that still come are marked.
    pub.close(60)
    delivered = consume_all(up.bootstrap, [topic])
    assert set(rec.acked) == set(delivered.ids)
    assert {e.event_id for e in window} <= set(delivered.ids), "Kafka came back within close(): the window got through"
    assert_in_order_once(first + window, delivered, set(delivered.ids))
