"""The ``batchmd`` command: ``relax``, ``md``, ``pipeline``, ``demo``, ``shard``, ``campaign``, ``traj``,
``plot``, the property commands ``eos``, ``elastic``, ``phonons`` (:mod:`batchmd.cli.properties`) and
``neb`` (:mod:`batchmd.cli.neb`).

Every user error (missing or unreadable file, bad frame, unknown option, bad model
parameter, elements the model has no parameters for) prints one line,
``batchmd: error: ...``, to stderr and exits with status 2; no output file is created.
Run ``batchmd COMMAND --help`` for the options.

Start-up: parsing arguments imports only the standard library and the ``batchmd.cli``
modules, so ``--help``, ``--version`` and argument errors answer in a fraction of a
second; torch, Warp and ASE are imported by the commands that run (see
``benchmarks/cli_startup.py``).

Verbosity: ``--quiet`` prints nothing but errors (Warp's messages included); ``-v`` logs
the model, device, dtype, batch budget, refills, neighbor-list rebuilds and the time of
each phase (``batchmd`` logger, INFO level, on stderr).

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

from batchmd.cli.errors import CLIError
from batchmd.workflows.errors import SpecError

__all__ = ["build_parser", "main"]

#: Command modules, each with ``add_parser(subparsers)``; imported when the parser is built
#: (they import only the standard library at module level).
COMMANDS = ("batchmd.cli.relax", "batchmd.cli.md", "batchmd.cli.pipeline", "batchmd.cli.demo",
            "batchmd.cli.shard", "batchmd.cli.campaign_cmds", "batchmd.cli.properties", "batchmd.cli.traj",
            "batchmd.cli.plot", "batchmd.cli.neb")


class _Parser(argparse.ArgumentParser):
    """argparse that raises :class:`CLIError` instead of printing usage and exiting."""

    def error(self, message):
        raise CLIError(message)


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Descriptions shown as written; every option's default shown (unless its help already says it)."""

    def _get_help_string(self, action):
        text = action.help or ""
        if "default" in text or action.default in (None, False, argparse.SUPPRESS) or action.required:
            return text
        return text + " (default: %(default)s)"


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``batchmd`` with every subcommand registered (no heavy imports)."""
    import importlib

    from batchmd import __version__

    parser = _Parser(prog="batchmd", formatter_class=HelpFormatter,
                     description="Batched molecular dynamics and relaxation with inflight batching.")
    parser.add_argument("--version", action="version", version=f"batchmd {__version__}")
    subparsers = parser.add_subparsers(dest="name", metavar="COMMAND", parser_class=_Parser)
    for name in COMMANDS:
        module = importlib.import_module(name)
        module.add_parser(subparsers)
    for sub in subparsers.choices.values():
        _inherit_formatter(sub)
    return parser


def _inherit_formatter(parser) -> None:
    """Every (sub)parser shows defaults and keeps its description's layout."""
    parser.formatter_class = HelpFormatter
    if parser.description:  # help is plain text: no reStructuredText markup
        parser.description = parser.description.replace("``", "").replace("::\n", ":\n")
    for action in parser._actions:
        if action.help:
            action.help = action.help.replace("``", "")
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                _inherit_formatter(sub)


def add_verbosity_arguments(parser) -> None:
    """``-v/--verbose`` and ``--quiet`` (each run command has both)."""
    group = parser.add_mutually_exclusive_group()
    group.add_argument("-v", "--verbose", action="store_true",
                       help="log model, device, dtype, batch budget, refills, neighbor-list rebuilds, timings")
    group.add_argument("-q", "--quiet", action="store_true", help="print nothing but errors")


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """Python warnings as one CLI line (no source path or code line): ``batchmd: warning: ...``."""
    print(f"batchmd: warning: {_one_line(message)}", file=sys.stderr if file is None else file)


def _configure_logging(args) -> None:
    import warnings

    level = logging.INFO if getattr(args, "verbose", False) else logging.WARNING
    if getattr(args, "quiet", False):
        level = logging.ERROR
        warnings.simplefilter("ignore")  # --quiet: nothing but errors (Python warnings included)
    elif not getattr(args, "verbose", False):
        warnings.showwarning = _show_warning  # -v keeps Python's form (file and line) for debugging
    logging.basicConfig(level=level, format="batchmd: %(message)s", stream=sys.stderr, force=True)
    for handler in logging.getLogger().handlers:
        handler.setFormatter(_CLIFormatter())


class _CLIFormatter(logging.Formatter):
    """``batchmd: message`` for information, ``batchmd: warning: message`` for warnings."""

    def format(self, record) -> str:
        prefix = "warning: " if record.levelno == logging.WARNING else ""
        return f"batchmd: {prefix}{record.getMessage()}"


def main(argv=None) -> int:
    """Run the ``batchmd`` command line; returns the exit status.

    0 on success, 2 on a user error (one line on stderr), 3 when the run finished and
    wrote every frame but some frames failed (``status = failed``, named on stderr), 130
    when interrupted by SIGINT and 143 by SIGTERM (finished frames are kept, see ``--resume``).

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
        _configure_logging(args)
        return int(args.command(args) or 0)
    except (CLIError, SpecError) as error:  # SpecError: a bad stage, model or config (batchmd.workflows)
        print(f"batchmd: error: {_one_line(error)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as error:
        from batchmd.cli.errors import Interrupted

        if isinstance(error, Interrupted) and len(error.args) == 2:
            signum, message = error.args
            print(f"batchmd: {message}", file=sys.stderr)
            return 128 + int(signum)
        print("batchmd: interrupted", file=sys.stderr)
        return 130


def _one_line(error) -> str:
    return " ".join(str(error).split())
