"""relay's own tables (cql/relay.cql), rendered for the configured keyspace and replication."""
from __future__ import annotations

import re
from importlib import resources
from string import Template

from relay.config import Config


def _replication(cfg: Config) -> str:
    parts = []
    for key, value in cfg.scylla.relay_replication.items():
        rendered = str(value) if isinstance(value, int) and not isinstance(value, bool) else str(value)
        parts.append(f"'{key}': '{rendered}'")
    return "{" + ", ".join(parts) + "}"


def render(name: str, keyspace: str, replication: str) -> str:
    text = resources.files("relay").joinpath("cql", name).read_text()
    return Template(text).safe_substitute(keyspace=keyspace, replication=replication)


def statements(text: str) -> list[str]:
    """Split a CQL file into statements (no `;` appears inside relay's string literals)."""
    body = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("--"))
    return [s.strip() for s in body.split(";") if s.strip()]


def relay_schema(cfg: Config) -> list[str]:
    return statements(render("relay.cql", cfg.scylla.relay_keyspace, _replication(cfg)))


def apply(session, cfg: Config) -> list[str]:
    """Create the relay keyspace and tables (idempotent); returns the table names created or kept."""
    done = []
    for stmt in relay_schema(cfg):
        session.execute(stmt, timeout=60)
        m = re.search(r"(?:TABLE|KEYSPACE) IF NOT EXISTS (\S+)", stmt)
        if m:
            done.append(m.group(1))
    return done
