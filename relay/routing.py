"""Token-aware routing for CDC log reads, and the replica sets that decide which tasks may share one.

A `"cdc$stream_id" IN ?` query has no routing key, so the driver would send it to any node, which
then asks the replicas. relay routes it itself: the streams of one query are chosen to share a
replica set (DESIGN §3b), and the query goes to a replica of its first stream.

On Scylla the log table uses the CDC partitioner: a stream id's token is its first 8 bytes (signed,
big-endian), not a Murmur3 hash, and the Python driver does not know that partitioner
(scylladb/python-driver#96, #407), so its own token-aware routing would pick wrong replicas. relay
asks Scylla which partitioner the log table uses; Cassandra (the test stack) has none of this and
hashes stream ids with Murmur3 like any key.
"""
from __future__ import annotations

import time
from collections.abc import Hashable

from cassandra.policies import TokenAwarePolicy

CDC_PARTITIONER = "com.scylladb.dht.CDCPartitioner"
REFRESH_S = 60.0  # topology changes are rare; a stale grouping is only slower, never wrong


def cdc_token(stream_id: bytes) -> int:
    """Scylla's CDC partitioner: the token is the stream id's first 8 bytes (SCYLLA_CDC.md §1)."""
    return int.from_bytes(stream_id[:8], "big", signed=True)


class Router:
    def __init__(self, session, log_keyspace: str, log_table_name: str) -> None:
        self.session = session
        self.keyspace = log_keyspace
        self.cdc_partitioner = self._uses_cdc_partitioner(log_table_name)
        if log_keyspace not in session.cluster.metadata.keyspaces:
            # The driver loads only the keyspaces relay asks for (relay.connect.load_metadata), and
            # without this one's replication it would find no replicas at all.
            session.cluster.refresh_keyspace_metadata(log_keyspace)
        self._groups: dict[bytes, Hashable] = {}
        self._groups_at = time.monotonic()

    def _uses_cdc_partitioner(self, table: str) -> bool:
        try:
            row = self.session.execute(
                "SELECT partitioner FROM system_schema.scylla_tables WHERE keyspace_name = %s AND table_name = %s",
                (self.keyspace, table)).one()
        except Exception:  # noqa: BLE001 - not Scylla (no such table): Murmur3 like every table
            return False
        return bool(row and row[0] == CDC_PARTITIONER)

    def token(self, stream_id: bytes):
        from cassandra.metadata import Murmur3Token

        if self.cdc_partitioner:
            return Murmur3Token(cdc_token(stream_id))  # same 64-bit ring as the cluster's tokens
        token_map = self.session.cluster.metadata.token_map
        return token_map.token_class.from_key(stream_id) if token_map else None

    def route(self, bound, stream_id: bytes) -> None:
        bound.relay_token = self.token(stream_id)

    def replica_set(self, stream_id: bytes) -> Hashable:
        """Hosts holding the stream, for grouping: queries never mix streams of different replica sets."""
        if time.monotonic() - self._groups_at > REFRESH_S:
            self._groups, self._groups_at = {}, time.monotonic()
        group = self._groups.get(stream_id)
        if group is None:
            token_map = self.session.cluster.metadata.token_map
            token = self.token(stream_id)
            hosts = token_map.get_replicas(self.keyspace, token) if token_map and token is not None else []
            group = self._groups[stream_id] = frozenset(str(h.host_id) for h in hosts)
        return group


class CdcTokenAwarePolicy(TokenAwarePolicy):
    """TokenAwarePolicy that also routes statements carrying a `relay_token` (CDC log reads)."""

    def make_query_plan(self, working_keyspace=None, query=None):
        token = getattr(query, "relay_token", None) if query is not None else None
        if token is None:
            yield from super().make_query_plan(working_keyspace, query)
            return
        keyspace = query.keyspace or working_keyspace
        token_map = self._cluster_metadata.token_map
        replicas = set(token_map.get_replicas(keyspace, token)) if token_map and keyspace else set()
        rest = []
        for host in self._child_policy.make_query_plan(keyspace, query):
            if host in replicas and host.is_up:
                yield host
            else:
                rest.append(host)
        yield from rest
