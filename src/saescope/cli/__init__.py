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
import re
import sys
import warnings
from contextlib import contextmanager

from .._io import disk_full_cause, disk_full_message
from ..errors import SaescopeError

# Modules that contribute subcommands, in the order they appear in --help.
COMMAND_MODULES = [
    "saescope.cli.demo",      # demo
    "saescope.cli.sae_cmds",  # list, convert
    "saescope.cli.interp",    # read, steer, ablate, attribute, feature
    "saescope.cli.train",     # harvest, train
    "saescope.cli.evals",     # eval
    "saescope.cli.report",    # dashboard, serve
    "saescope.cli.explain",   # explain
    "saescope.cli.plan",      # plan
    "saescope.cli.graph",     # trace
]


class _Parser(argparse.ArgumentParser):
    """argparse that reports a usage error as one line and exit code 2."""

    def error(self, message: str):  # noqa: D401 - argparse API
        sys.stderr.write(one_line(f"error: {self.prog}: {message}") + "\n")
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
    if not args.verbose:   # notes of transformers/huggingface_hub's own loggers ("Token indices sequence length
        for var in ("TRANSFORMERS_VERBOSITY", "HF_HUB_VERBOSITY"):   # is longer than..."): errors only, unless -v
            os.environ.setdefault(var, "error")
    handler = logging.StreamHandler()
    handler.setFormatter(_OneLineFormatter("%(levelname)s: %(message)s"))
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING, handlers=[handler])
    if not getattr(args, "handler", None):
        parser.print_help()
        return 2
    with _dependency_warnings_to_debug_log():
        return _run(args)


def _run(args) -> int:
    """The error boundary: every failure is one line on stderr; user errors (and a refusing disk) exit 2."""
    try:
        code = args.handler(args)
    except SaescopeError as exc:
        return _fail(f"error: {exc}", 2)
    except BrokenPipeError:
        return 0
    except KeyboardInterrupt:
        sys.stderr.write("interrupted\n")
        return 130
    except Exception as exc:
        full = disk_full_cause(exc)
        if full is not None:   # a library wrapped the full disk (torch: RuntimeError, safetensors, sqlite)
            where = full.filename or getattr(exc, "filename", None) or "a file"
            return _fail(f"error: {disk_full_message(where, full)}", 2)
        if isinstance(exc, OSError):  # the environment refused (not a directory, permission): the user's to fix
            where = f" {exc.filename}" if exc.filename else ""
            return _fail(f"error: cannot use{where}: {exc.strerror or exc}", 2)
        if os.environ.get("SAESCOPE_DEBUG"):  # a bug: still one line, the traceback only on request
            raise
        return _fail(f"internal error: {type(exc).__name__}: {exc} (set SAESCOPE_DEBUG=1 for the traceback)", 1)
    return int(code or 0)


def _fail(message: str, code: int) -> int:
    sys.stderr.write(one_line(message) + "\n")
    return code


# Control characters (newlines, ANSI escapes, U+2028/9, lone surrogates from undecodable file names) would
# split a message over several lines or rewrite the terminal: they are shown as Python escapes instead.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff]")


def one_line(text: str) -> str:
    """``text`` with every control character written as its Python escape (``\\n``, ``\\x1b``): one line, nothing lost."""
    return _CONTROL.sub(lambda m: repr(m.group())[1:-1], str(text))


class _OneLineFormatter(logging.Formatter):
    """Log records as one line each (the message escaped as by ``one_line``; tracebacks, with -v, as they are)."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        record.message = one_line(record.message)
        return super().formatMessage(record)


@contextmanager
def _dependency_warnings_to_debug_log():
    """Python warnings raised while a command runs (torch, transformers, huggingface_hub deprecations and
    notes that do not concern the user) go to the debug log (shown with -v) instead of stderr. saescope's own
    warnings are log records and are not affected; -W / PYTHONWARNINGS, when given, are respected as they are."""
    if sys.warnoptions:
        yield
        return
    log = logging.getLogger("saescope.warnings")

    def to_log(message, category, filename, lineno, file=None, line=None):
        log.debug("%s: %s (%s:%s)", category.__name__, message, filename, lineno)

    with warnings.catch_warnings():
        warnings.showwarning = to_log
        yield


if __name__ == "__main__":
    raise SystemExit(main())
