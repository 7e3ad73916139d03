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
        sys.stderr.write(f"erase: error: {one_line(error)}\n")
        return error.exit_code
    except KeyboardInterrupt:
        sys.stderr.write("erase: interrupted\n")
        return 130
    except OSError as error:  # a full disk, a vanished folder: the file it hit, no partial output (core/io.py)
        where = f": {error.filename}" if error.filename else ""
        sys.stderr.write(f"erase: error: {error.strerror or one_line(error)}{where}\n")
        return 1
    except Exception as error:  # a bug of ours: one line, the traceback only on request
        if os.environ.get("ERASE_DEBUG"):
            raise
        sys.stderr.write(f"erase: internal error: {type(error).__name__}: {one_line(error)} "
                         "(ERASE_DEBUG=1 shows the traceback)\n")
        return 1
    return int(result or 0)


def one_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__


if __name__ == "__main__":
    sys.exit(main())
