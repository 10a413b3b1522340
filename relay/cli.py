"""`relay …` command line (DESIGN §8). User errors: one line on stderr, exit code 2.

Each command lives in its own module with a `register(subparsers, common)` function that
adds its parser and sets `func`. Modules import heavy libraries inside their handlers, so
`relay --help` stays fast and no client library is imported before the supervisor has set
up the environment (PROMETHEUS_MULTIPROC_DIR must precede any prometheus_client import).
"""
from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys

from relay import __version__
from relay.errors import UserError

# Order = order in `relay --help`.
COMMAND_MODULES = [
    "relay.commands.run",
    "relay.commands.schema",
    "relay.commands.config_check",
    "relay.commands.status",
    "relay.commands.dlq",
    "relay.commands.replay",
    "relay.commands.loadgen",
    "relay.commands.verify",
]


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    # SUPPRESS: `relay schema --config X apply` must not be reset by the nested parser's default.
    common.add_argument("--config", metavar="PATH", default=argparse.SUPPRESS,
                        help="TOML config file (default: $RELAY_CONFIG, else ./relay.toml, else environment only)")
    common.add_argument("--log-level", default=argparse.SUPPRESS,
                        choices=["DEBUG", "INFO", "WARNING", "ERROR"], help="log level (default INFO)")
    parser = argparse.ArgumentParser(
        prog="relay", description="Publish the CDC log of ScyllaDB outbox tables to Kafka.")
    parser.add_argument("--version", action="version", version=f"relay {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name == name:
                continue  # not built yet
            raise
        module.register(sub, common)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.config = getattr(args, "config", None)
    args.log_level = getattr(args, "log_level", os.environ.get("RELAY_LOG_LEVEL", "INFO"))
    if not getattr(args, "func", None):
        parser.print_help()
        return 0 if args.command is None else 2
    logging.basicConfig(level=getattr(args, "log_level", "INFO"),
                        format="%(asctime)s %(levelname)s %(processName)s %(name)s: %(message)s")
    # The driver logs every host discovery at INFO; only its problems matter to an operator.
    logging.getLogger("cassandra").setLevel(logging.WARNING)
    try:
        return int(args.func(args) or 0)
    except UserError as exc:
        print(f"relay: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
