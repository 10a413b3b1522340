"""The relay keyspace's replication: the default, and `relay config check`'s judgement of a map."""
from __future__ import annotations

import pytest

from relay import config
from relay.commands.config_check import replicas, replication_warning


def test_default_relay_replication_is_three_replicas_per_data_centre():
    cfg = config.load(None, environ={"RELAY_KAFKA__BOOTSTRAP_SERVERS": "k:9092"})
    assert dict(cfg.scylla.relay_replication) == {"class": "NetworkTopologyStrategy", "replication_factor": 3}
    assert replication_warning("relay", cfg.scylla.relay_replication, exists=False) is None


@pytest.mark.parametrize(("replication", "expected"), [
    ({"class": "SimpleStrategy", "replication_factor": 1}, 1),
    ({"class": "org.apache.cassandra.locator.SimpleStrategy", "replication_factor": "2"}, 2),
    ({"class": "NetworkTopologyStrategy", "dc1": "3", "dc2": "2"}, 2),
    ({"class": "NetworkTopologyStrategy", "dc1": "3", "dc2": "0"}, 3),  # 0: not replicated there at all
    ({"class": "NetworkTopologyStrategy", "dc1": "3/1"}, 3),  # Cassandra's transient replicas
    ({"class": "LocalStrategy"}, None),
])
def test_replicas(replication, expected):
    assert replicas(replication) == expected


def test_warning_names_the_keyspace_and_the_fix():
    created = replication_warning("relay", {"class": "SimpleStrategy", "replication_factor": "1"}, exists=True)
    assert created == ("keyspace relay has 1 replica, fewer than 3: at QUORUM one node down stops checkpoints and dead "
                       "letters (raise it with ALTER KEYSPACE)")
    planned = replication_warning("relay", {"class": "NetworkTopologyStrategy", "dc1": 2}, exists=False)
    assert planned is not None and "would get 2 replicas" in planned and "scylla.relay_replication" in planned
