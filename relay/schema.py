"""relay's own tables (cql/relay.cql), rendered for the configured keyspace and replication."""
from __future__ import annotations

import re
from collections.abc import Mapping
from importlib import resources
from string import Template
from typing import Any

from relay.config import Config

RELAY_TABLES = frozenset({"checkpoints", "dead_letters"})


def replication_literal(replication: Mapping[str, Any]) -> str:
    """A replication map as CQL: {'class': 'SimpleStrategy', 'replication_factor': '1'}."""
    return "{" + ", ".join(f"'{k}': '{v}'" for k, v in replication.items()) + "}"


def missing_relay_tables(session, keyspace: str) -> set[str]:
    """relay's tables absent from `keyspace` (all of them when the keyspace does not exist)."""
    rows = session.execute("SELECT table_name FROM system_schema.tables WHERE keyspace_name = %s", (keyspace,))
    return set(RELAY_TABLES - {r[0] for r in rows})


def has_cdc_log(session, keyspace: str, table: str) -> bool:
    rows = session.execute("SELECT table_name FROM system_schema.tables WHERE keyspace_name = %s AND "
                           "table_name = %s", (keyspace, f"{table}_scylla_cdc_log"))
    return rows.one() is not None


def render(name: str, keyspace: str, replication: str) -> str:
    text = resources.files("relay").joinpath("cql", name).read_text()
    return Template(text).safe_substitute(keyspace=keyspace, replication=replication)


def statements(text: str) -> list[str]:
    """Split a CQL file into statements (no `;` appears inside relay's string literals)."""
    body = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("--"))
    return [s.strip() for s in body.split(";") if s.strip()]


def relay_schema(cfg: Config) -> list[str]:
    return statements(render("relay.cql", cfg.scylla.relay_keyspace,
                             replication_literal(cfg.scylla.relay_replication)))


def apply(session, cfg: Config) -> list[str]:
    """Create the relay keyspace and tables (idempotent); returns the table names created or kept."""
    done = []
    for stmt in relay_schema(cfg):
        session.execute(stmt, timeout=60)
        m = re.search(r"(?:TABLE|KEYSPACE) IF NOT EXISTS (\S+)", stmt)
        if m:
            done.append(m.group(1))
    return done
