"""The ``saescope`` command: a thin layer that parses arguments, calls one function and prints the result.

Each group of subcommands lives in its own module with a ``register(subparsers)`` function;
handlers receive the parsed ``argparse.Namespace`` and return an exit code (or None for 0).
User errors are ``SaescopeError``: printed as one line on stderr, exit code 2, never a traceback.
"""
from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys

from ..errors import SaescopeError

# Modules that contribute subcommands, in the order they appear in --help.
COMMAND_MODULES = [
    "saescope.cli.demo",      # demo
    "saescope.cli.sae_cmds",  # list, convert
    "saescope.cli.interp",    # read, steer, ablate, attribute, feature
    "saescope.cli.train",     # harvest, train
    "saescope.cli.evals",     # eval
    "saescope.cli.report",    # dashboard, serve
    "saescope.cli.plan",      # plan
]


class _Parser(argparse.ArgumentParser):
    """argparse that reports a usage error as one line and exit code 2."""

    def error(self, message: str):  # noqa: D401 - argparse API
        sys.stderr.write(f"error: {self.prog}: {message}\n")
        raise SystemExit(2)


def build_parser() -> argparse.ArgumentParser:
    from .._version import __version__

    parser = _Parser(prog="saescope", description="Sparse autoencoders on language models: read, steer, train, browse.")
    parser.add_argument("--version", action="version", version=f"saescope {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="show debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:  # a command group not written yet
            if exc.name != name:
                raise
            continue
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING, format="%(levelname)s: %(message)s")
    if not getattr(args, "handler", None):
        parser.print_help()
        return 2
    try:
        code = args.handler(args)
    except SaescopeError as exc:
        sys.stderr.write(f"error: {exc}\n")
        return 2
    except BrokenPipeError:
        return 0
    except OSError as exc:  # the environment refused (not a directory, permission, disk full): the user's to fix
        where = f" {exc.filename}" if exc.filename else ""
        sys.stderr.write(f"error: cannot use{where}: {exc.strerror or exc}\n")
        return 2
    except KeyboardInterrupt:
        sys.stderr.write("interrupted\n")
        return 130
    except Exception as exc:  # a bug: still one line, the traceback only on request
        if os.environ.get("SAESCOPE_DEBUG"):
            raise
        sys.stderr.write(f"internal error: {type(exc).__name__}: {exc} (set SAESCOPE_DEBUG=1 for the traceback)\n")
        return 1
    return int(code or 0)


if __name__ == "__main__":
    raise SystemExit(main())
