"""What every command module shares: the user-error type, running a command, flag parsing.

Command modules (``cli``, ``*_cli``) import this module, never each other's
entry point, so the ``edgecloud`` command can import them without a circle.
Library errors (:class:`~edgecloud.core.errors.EdgecloudError`) are mapped to
the command's exit code here, in :func:`run`, and nowhere below.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from edgecloud.core.errors import EdgecloudError

EXIT_USAGE = 2
"""Exit code of a command the user asked for wrongly."""


class CliError(Exception):
    """A problem with what the user asked for; printed without a traceback."""


def pairs(values: Sequence[str] | None, what: str) -> dict[str, str] | None:
    """Parse repeated ``KEY=VALUE`` flags."""
    if not values:
        return None
    out: dict[str, str] = {}
    for item in values:
        key, sep, value = item.partition("=")
        if not sep or not key or not value:
            raise CliError(f"{what} must be KEY=VALUE (got {item!r})")
        if key in out:
            raise CliError(f"{what} {key!r} given twice")
        out[key] = value
    return out


def add_verbose(p: argparse.ArgumentParser) -> None:
    """``--verbose``: library log lines on stderr, as readable text."""
    p.add_argument("-v", "--verbose", action="store_true",
                   help="also log what the libraries report (warnings, progress) to stderr "
                   "as text (default: only the command's output and errors)")


def leaf_parser(parser: argparse.ArgumentParser,
                args: argparse.Namespace) -> argparse.ArgumentParser:
    """The (sub)command parser that parsed ``args``: the one whose usage fits a mistake."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            chosen = action.choices.get(getattr(args, action.dest, None) or "")
            if chosen is not None:
                return leaf_parser(chosen, args)
    return parser


def _message(exc: Exception) -> str:
    if isinstance(exc, EdgecloudError):
        return exc.message
    if isinstance(exc, OSError) and exc.filename is not None:
        return f"{exc.filename}: {exc.strerror or exc}"
    return str(exc)


def run(args: argparse.Namespace) -> int:
    """Run a parsed command: user errors and files that cannot be read or written
    become one line on stderr and exit code 2."""
    handler: Callable[[argparse.Namespace], int] = args.handler
    try:
        return handler(args)
    except (CliError, EdgecloudError, OSError) as exc:
        print(f"edgecloud: error: {_message(exc)}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130
