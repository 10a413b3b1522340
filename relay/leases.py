"""Lease slots through Kafka's consumer-group coordinator (DESIGN §5b): the supervisor's one consumer.

Slot p is partition p of `leases.topic`; the partitions the group assigns to this replica are the
slots it owns. The topic carries no data: the consumer only takes part in the group. It lives on a
thread of its own that polls it every 0.1 s, because confluent-kafka runs rebalance callbacks
inside poll(), and a revoke must be able to wait for the supervisor's drain while the supervisor's
loop goes on. Everything the group says goes to the supervisor as events on a queue; the decisions
are `relay.ownership.Ownership`'s.

Membership proofs (self-fencing): every `renew_seconds` while it owns slots, the thread commits
offset 0 of one owned partition. Only a current member of a stable group can commit, and a
commit keeps its session (classic protocol), so a success proves the session lasts at least
`duration` from the commit's send time. librdkafka's own heartbeats are invisible to the
application; the commit is the proof it can see.
"""
from __future__ import annotations

import logging
import queue
import threading
import time
from collections import deque
from dataclasses import dataclass, field

from relay.config import Config
from relay.connect import kafka_client_base
from relay.errors import UserError

log = logging.getLogger("relay.leases")

POLL_S = 0.1
HEARTBEAT_MAX_S = 1.0


# ------------------------------------------------------------------ events for the supervisor
@dataclass(frozen=True)
class Assigned:
    slots: frozenset[int]


@dataclass(frozen=True)
class Revoked:
    slots: frozenset[int]
    done: threading.Event = field(compare=False)  # set by the supervisor once the slots are drained


@dataclass(frozen=True)
class Lost:
    slots: frozenset[int]


@dataclass(frozen=True)
class Proven:
    sent_at: float  # monotonic send time of a commit that succeeded


def consumer_config(cfg: Config, on_commit, on_error) -> dict:
    lz = cfg.leases
    conf = {
        **kafka_client_base(cfg),
        "group.id": cfg.leases_group_id,
        "client.id": f"relay-{cfg.replica_id}",  # what `relay status` and Kafka's tools show per member
        "partition.assignment.strategy": "cooperative-sticky",
        "session.timeout.ms": int(lz.duration_seconds * 1000),
        # Members learn of a rebalance (a peer left or joined) from their next heartbeat's answer:
        # at most a second, whatever renew_seconds, so a handover does not wait up to 3 s for it.
        "heartbeat.interval.ms": int(min(lz.renew_seconds, HEARTBEAT_MAX_S) * 1000),
        # The loop polls every 0.1 s; only a revoke's drain (≤ shutdown_timeout) holds it longer.
        "max.poll.interval.ms": int(max(300.0, 2 * (cfg.relay.shutdown_timeout_seconds + lz.duration_seconds))
                                    * 1000),
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "auto.offset.reset": "latest",
        "on_commit": on_commit,
        "error_cb": on_error,
    }
    if lz.static_membership:
        conf["group.instance.id"] = cfg.replica_id
    return conf


class KafkaUnreachable(Exception):
    """Kafka did not answer: retry (the supervisor waits), unlike a misconfiguration (UserError)."""


def ensure_topic(cfg: Config, timeout: float = 15.0) -> str:
    """Create the coordination topic with `slots` partitions when missing; refuse one of another size
    (tasks of slots beyond its partitions would never run). Returns what was done."""
    from confluent_kafka import KafkaException
    from confluent_kafka.admin import AdminClient, NewTopic

    from relay.kafkameta import topic_partitions

    topic, slots = cfg.leases_topic, cfg.leases.slots
    admin = AdminClient(kafka_client_base(cfg))

    def partitions() -> int | None:
        try:
            return topic_partitions(admin, [topic], timeout)[topic]
        except KafkaException as exc:
            raise KafkaUnreachable(f"cannot reach Kafka ({cfg.kafka.bootstrap_servers}) to check the leases "
                                   f"topic {topic!r}: {exc}") from None

    have = partitions()
    action = "exists"
    if have is None:
        rf = cfg.kafka.topic_replication_factor
        futures = admin.create_topics([NewTopic(topic, num_partitions=slots, replication_factor=rf)],
                                      operation_timeout=timeout, request_timeout=timeout)
        try:
            futures[topic].result(timeout)
            action = "created"
        except KafkaException as exc:
            if "TOPIC_ALREADY_EXISTS" not in str(exc):  # else a peer created it first
                raise UserError(f"{cfg.source}: leases.topic: cannot create {topic!r}: {exc}") from None
        deadline = time.monotonic() + timeout
        while (have := partitions()) is None and time.monotonic() < deadline:
            time.sleep(0.2)
    if have != slots:
        raise UserError(f"{cfg.source}: leases.slots: {slots}, but the leases topic {topic!r} has {have} "
                        f"partitions; the two must match (set leases.slots = {have}, or use a new leases.topic)")
    return f"kafka topic {topic} ({slots} partitions, {action})"


def parse_generation(metadata: bytes) -> int | None:
    """The group generation from librdkafka's serialized consumer group metadata (`CGMDv2:` + int32)."""
    if metadata[:7] != b"CGMDv2:" or len(metadata) < 11:
        return None
    return int.from_bytes(metadata[7:11], "little", signed=True)  # written in the host's order (x86: little)


class EventQueue:
    """The lease thread's facts for the supervisor, whose loop they wake: it waits on `fileno()`
    beside the workers' pipes, so a proof or a revoke is acted on at once, not at its next tick."""

    def __init__(self) -> None:
        import socket

        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._read, self._write = socket.socketpair()
        self._read.setblocking(False)
        self._write.setblocking(False)

    def put(self, event) -> None:
        self._queue.put(event)
        try:
            self._write.send(b"\0")
        except OSError:  # full (the loop is behind; it is awake anyway) or closed at exit
            pass

    def get_nowait(self):
        return self._queue.get_nowait()

    def fileno(self) -> int:
        return self._read.fileno()

    def clear_wakeups(self) -> None:
        try:
            while self._read.recv(4096):
                pass
        except OSError:  # nothing left (BlockingIOError)
            pass


class GroupMember:
    """The replica's member of the leases group, on a thread of its own."""

    def __init__(self, cfg: Config, events: EventQueue | queue.SimpleQueue, clock=time.monotonic) -> None:
        self.cfg = cfg
        self.events = events
        self.clock = clock
        self.topic = cfg.leases_topic
        self._closing = threading.Event()
        self._closed = threading.Event()
        self._owned: set[int] = set()
        self._proofs: deque[float] = deque()  # send times of commits without a reply yet
        self._next_proof = 0.0
        self.member_id = ""
        self.generation: int | None = None
        self.last_error = ""
        self.consumer = None
        self._thread: threading.Thread | None = None
        self.revoke_wait_s = cfg.relay.shutdown_timeout_seconds + 5.0

    def start(self) -> None:
        from confluent_kafka import Consumer

        self.consumer = Consumer(consumer_config(self.cfg, self._on_commit, self._on_error))
        self.consumer.subscribe([self.topic], on_assign=self._on_assign, on_revoke=self._on_revoke,
                                on_lost=self._on_lost)
        self._thread = threading.Thread(target=self._run, name="relay-leases", daemon=True)
        self._thread.start()

    def close(self, timeout: float = 10.0) -> None:
        """Leave the group (LeaveGroup: peers take over at once). Call after the workers have drained."""
        self._closing.set()
        if self._thread is not None:
            self._thread.join(timeout)

    # ------------------------------------------------------------------ the thread
    def _run(self) -> None:
        c = self.consumer
        try:
            while not self._closing.is_set():
                msg = c.poll(POLL_S)  # callbacks run in here; the topic never has data
                if msg is not None and msg.error():
                    log.debug("leases consumer: %s", msg.error())
                self._prove(self.clock())
        except Exception:  # noqa: BLE001 - the fence deadline runs out: workers stop publishing
            log.exception("leases consumer failed")
        finally:
            try:
                c.close()
            except Exception as exc:  # noqa: BLE001
                log.warning("leases consumer close: %s", exc)
            self._closed.set()

    def _prove(self, now: float) -> None:
        from confluent_kafka import TopicPartition

        if now < self._next_proof or not self._owned or self._proofs:
            return
        self._next_proof = now + self.cfg.leases.renew_seconds
        self._proofs.append(now)
        try:
            self.consumer.commit(offsets=[TopicPartition(self.topic, min(self._owned), 0)], asynchronous=True)
        except Exception as exc:  # noqa: BLE001 - no proof this round
            self._proofs.pop()
            log.debug("membership proof not sent: %s", exc)

    def _on_commit(self, err, partitions) -> None:
        sent = self._proofs.popleft() if self._proofs else None
        failed = err or next((p.error for p in partitions or () if p.error), None)
        if failed:
            log.debug("membership proof failed: %s", failed)
            return
        if sent is not None:
            self.events.put(Proven(sent))

    def _on_error(self, err) -> None:
        self.last_error = str(err)
        log.warning("leases group: %s", err)

    def _refresh_identity(self) -> None:
        try:
            self.member_id = self.consumer.memberid() or ""
            self.generation = parse_generation(self.consumer.consumer_group_metadata())
        except Exception:  # noqa: BLE001 - informational only
            pass

    def _on_assign(self, consumer, partitions) -> None:
        slots = frozenset(p.partition for p in partitions)
        consumer.incremental_assign(partitions)
        if partitions:
            consumer.pause(partitions)  # nothing to fetch: the partitions are leases, not data
        self._owned |= slots
        self._next_proof = 0.0  # prove at once: workers publish only after a proof
        self._refresh_identity()
        log.info("leases: assigned slots %s (member %s, generation %s)", sorted(slots), self.member_id,
                 self.generation)
        self.events.put(Assigned(slots))

    def _on_revoke(self, consumer, partitions) -> None:
        slots = frozenset(p.partition for p in partitions)
        self._owned -= slots
        if self._closing.is_set():
            return  # closing after the workers stopped: nothing runs any more
        done = threading.Event()
        t0 = time.monotonic()
        log.info("leases: slots %s revoked; draining their tasks", sorted(slots))
        self.events.put(Revoked(slots, done))
        if not done.wait(self.revoke_wait_s):
            log.error("leases: the drain of slots %s did not end in %.0fs; handing them over anyway",
                      sorted(slots), self.revoke_wait_s)
        else:
            log.info("leases: slots %s drained in %.2fs", sorted(slots), time.monotonic() - t0)
        self._refresh_identity()

    def _on_lost(self, consumer, partitions) -> None:
        slots = frozenset(p.partition for p in partitions)
        self._owned -= slots
        log.warning("leases: slots %s lost (session expired or fenced); their tasks stop now", sorted(slots))
        self.events.put(Lost(slots))

    def snapshot(self) -> dict:
        """This replica's side of the group. Who else is in it is asked by `relay status`
        (`describe_group`), not polled here: an AdminClient describing the group every few seconds
        from the supervisor aborted the process inside librdkafka 2.16 when the broker went away
        and came back (assertion in rd_kafka_enq_once_del_source_return, seen in a Kafka outage test)."""
        return {"member_id": self.member_id, "generation": self.generation}


def replica_of_client(client_id: str) -> str:
    return client_id[len("relay-"):] if client_id.startswith("relay-") else client_id


def describe_group(cfg: Config, timeout: float = 10.0) -> dict:
    """The leases group as Kafka's coordinator sees it: state and each member's slots, keyed by replica
    id (from its client id). For `relay status`; works whether or not this host runs relay."""
    from confluent_kafka.admin import AdminClient

    group = cfg.leases_group_id
    admin = AdminClient(kafka_client_base(cfg))
    desc = admin.describe_consumer_groups([group], request_timeout=timeout)[group].result(timeout)
    members: dict[str, list[int]] = {}
    for m in desc.members:
        parts = sorted(tp.partition for tp in (m.assignment.topic_partitions if m.assignment else ()))
        members.setdefault(replica_of_client(m.client_id), []).extend(parts)
    return {"group_id": group, "topic": cfg.leases_topic, "slots": cfg.leases.slots,
            "state": str(getattr(desc.state, "name", desc.state)), "members": members}
