"""relay's own tables (cql/relay.cql), rendered for the configured keyspace and replication."""
from __future__ import annotations

import re
from collections.abc import Mapping
from importlib import resources
from string import Template
from typing import Any

from relay.config import Config

RELAY_TABLES = frozenset({"checkpoints", "dead_letters", "parked_aggregates"})
_ADD_COLUMN = re.compile(r"ALTER TABLE (\S+)\.(\w+) ADD (\w+) ", re.IGNORECASE)


def replication_literal(replication: Mapping[str, Any]) -> str:
    """A replication map as CQL: {'class': 'SimpleStrategy', 'replication_factor': '1'}."""
    return "{" + ", ".join(f"'{k}': '{v}'" for k, v in replication.items()) + "}"


def missing_relay_tables(session, keyspace: str) -> set[str]:
    """relay's tables absent from `keyspace` (all of them when the keyspace does not exist), and
    `table.column` for each column a newer relay added that an upgrade has not applied yet."""
    rows = session.execute("SELECT table_name FROM system_schema.tables WHERE keyspace_name = %s", (keyspace,))
    missing = set(RELAY_TABLES - {r[0] for r in rows})
    for table, column in _added_columns():
        if table not in missing and column not in _columns(session, keyspace, table):
            missing.add(f"{table}.{column}")
    return missing


def require_relay_tables(session, keyspace: str) -> None:
    """Raises ConfigError (a UserError: one line, no traceback) naming what `relay schema apply`
    would create: the keyspace, or the tables and columns it lacks."""
    missing = missing_relay_tables(session, keyspace)
    if not missing:
        return
    from relay.errors import ConfigError

    if missing >= RELAY_TABLES and session.execute(
            "SELECT keyspace_name FROM system_schema.keyspaces WHERE keyspace_name = %s", (keyspace,)).one() is None:
        raise ConfigError(f"relay keyspace {keyspace!r} does not exist: run `relay schema apply` first")
    raise ConfigError(f"relay keyspace {keyspace!r} lacks {', '.join(sorted(missing))}: "
                      f"run `relay schema apply` first")


def _columns(session, keyspace: str, table: str) -> set[str]:
    rows = session.execute("SELECT column_name FROM system_schema.columns WHERE keyspace_name = %s AND "
                           "table_name = %s", (keyspace, table))
    return {r[0] for r in rows}


def _added_columns() -> list[tuple[str, str]]:
    """(table, column) of every `ALTER TABLE … ADD` in relay.cql."""
    return [(m.group(2), m.group(3)) for stmt in statements(render("relay.cql", "ks", "{}"))
            if (m := _ADD_COLUMN.match(stmt))]


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
    """Create the relay keyspace and tables, or upgrade them with the columns added since they were
    made (idempotent, additive only); returns the table names created or kept."""
    done = []
    for stmt in relay_schema(cfg):
        add = _ADD_COLUMN.match(stmt)
        if add and add.group(3) in _columns(session, cfg.scylla.relay_keyspace, add.group(2)):
            continue  # an upgrade step already applied (or a table created with the column)
        session.execute(stmt, timeout=60)
        m = re.search(r"(?:TABLE|KEYSPACE) IF NOT EXISTS (\S+)", stmt)
        if m:
            done.append(m.group(1))
    return done
