"""`relay …` command line (DESIGN §8). User errors: one line on stderr, exit code 2."""
from __future__ import annotations

import argparse
import sys

from relay import __version__
from relay.errors import UserError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="relay", description="Publish the CDC log of ScyllaDB outbox tables to Kafka.")
    parser.add_argument("--version", action="version", version=f"relay {__version__}")
    parser.add_subparsers(dest="command", metavar="COMMAND")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    try:
        return int(args.func(args) or 0)
    except UserError as exc:
        print(f"relay: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
