"""The ``batchmd`` command: ``relax``, ``md``, ``pipeline`` and ``demo``.

Every user error (missing or unreadable file, bad frame, unknown option, bad model
parameter) prints one line, ``batchmd: error: ...``, to stderr and exits with status 2;
no output file is created. Run ``batchmd COMMAND --help`` for the options.

Example
-------
>>> from batchmd.cli import main
>>> main(["relax", "structures.extxyz", "-o", "relaxed.extxyz", "--fmax", "0.01"])  # doctest: +SKIP
0
"""

from __future__ import annotations

import argparse
import logging
import sys

from batchmd.cli.common import CLIError

__all__ = ["build_parser", "main"]


class _Parser(argparse.ArgumentParser):
    """argparse that raises :class:`CLIError` instead of printing usage and exiting."""

    def error(self, message):
        raise CLIError(message)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``batchmd`` with every subcommand registered."""
    from batchmd import __version__
    from batchmd.cli import demo, md, pipeline, relax

    parser = _Parser(prog="batchmd", description="Batched molecular dynamics and relaxation with inflight batching.")
    parser.add_argument("--version", action="version", version=f"batchmd {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log what the library does (INFO level)")
    subparsers = parser.add_subparsers(dest="name", metavar="COMMAND", parser_class=_Parser)
    for module in (relax, md, pipeline, demo):
        module.add_parser(subparsers)
    _register_optional(subparsers)
    return parser


def _register_optional(subparsers) -> None:
    """Commands of optional layers: a module exposing ``add_parser(subparsers)`` is registered."""
    import importlib

    for name in ("batchmd.cli.shard", "batchmd.cli.campaign_cmds"):
        try:
            module = importlib.import_module(name)
        except ImportError:
            continue
        if hasattr(module, "add_parser"):
            module.add_parser(subparsers)


def main(argv=None) -> int:
    """Run the ``batchmd`` command line; returns the exit status (0 on success, 2 on a user error).

    Parameters
    ----------
    argv : list of str, optional
        Arguments without the program name (default ``sys.argv[1:]``).
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        parser = build_parser()
        args = parser.parse_args(argv)
        if getattr(args, "command", None) is None:
            parser.print_help(sys.stderr)
            return 2
        logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                            format="%(levelname)s %(name)s: %(message)s")
        return int(args.command(args) or 0)
    except CLIError as error:
        print(f"batchmd: error: {_one_line(error)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("batchmd: interrupted", file=sys.stderr)
        return 130


def _one_line(error) -> str:
    return " ".join(str(error).split())
