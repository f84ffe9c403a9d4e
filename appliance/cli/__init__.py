"""The `appliance` command: one entry point, a module per sub-command.

Each module in `SUBCOMMAND_MODULES` defines `register(subparsers)`; see docs/interfaces.md.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import logging
import sys
import typing

from appliance import __version__
from appliance.cli.common import UserError
from appliance.config import ConfigError

SUBCOMMAND_MODULES = ("run", "simulate", "selftest", "calibrate", "clinic", "say", "listen", "voice", "stim_off")


class Parser(argparse.ArgumentParser):
    """argparse, but a wrong argument is one sentence (not the whole usage) and a pointer to --help."""

    def error(self, message: str) -> typing.NoReturn:
        self.exit(2, f"{self.prog}: {message}; see `{self.prog} --help`\n")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="appliance",
        description="Voice-guided pelvic-floor home trainer.",
    )
    parser.add_argument("--version", action="version", version=f"appliance {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in SUBCOMMAND_MODULES:
        module_name = f"appliance.cli.{name}"
        if importlib.util.find_spec(module_name) is None:
            continue  # a sub-command still being written is simply not offered
        importlib.import_module(module_name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    try:
        return int(args.func(args) or 0)
    except (UserError, ConfigError) as exc:
        print(f"appliance {args.command}: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # a place the sub-command did not check first: still one sentence
        if args.verbose:
            raise
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"appliance {args.command}: {where}{exc.strerror or exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
