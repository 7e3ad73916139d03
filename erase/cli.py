"""`erase <command>`: parses arguments and calls the library. Each command lives in erase/commands/."""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from erase.errors import EraseError

# Each module defines register(subparsers); its parser sets `func`. Add new commands here.
COMMAND_MODULES = [
    "erase.commands.demo",
    "erase.commands.pretrain",
    "erase.commands.run",
    "erase.commands.evaluate",
    "erase.commands.classifier",
    "erase.commands.ddpm",
    "erase.commands.dit",
    "erase.commands.generate",
    "erase.commands.sd",
    "erase.commands.patch",
    "erase.commands.export",
    "erase.commands.fisher",
    "erase.commands.attack",
]


class OneLineErrorParser(argparse.ArgumentParser):
    """argparse that reports a usage mistake as one line on stderr and exit code 2."""

    def error(self, message):
        sys.stderr.write(f"{self.prog}: error: {message}\n")
        raise SystemExit(2)


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineErrorParser(prog="erase", description=__doc__.split("\n")[0])
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=OneLineErrorParser)
    subparsers.required = True
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(subparsers)
    return parser


def main(argv=None) -> int:
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        result = args.func(args)
    except EraseError as error:
        sys.stderr.write(f"erase: error: {error}\n")
        return error.exit_code
    except KeyboardInterrupt:
        sys.stderr.write("erase: interrupted\n")
        return 130
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
