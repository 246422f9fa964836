"""The `ddim` command (also `python -m ddim`): train, sample, invert, interpolate, demo, eval,
bench-samplers.

Every subcommand has --help and --dry-run (print the resolved configuration as JSON, do no work).
A user's error (a `ddim.errors.DdimError`) exits with status 2 and one line on stderr; a
traceback means a bug in ddim.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import NoReturn

from ddim.cli import evaluate, generate, train
from ddim.distributed import shutdown
from ddim.errors import DdimError


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line: `ddim sample: error: ...`."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="ddim",
        description="Denoising diffusion models: DDPM training, DDIM sampling, inversion and interpolation.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    train.add_parsers(commands)
    generate.add_parsers(commands)
    evaluate.add_parsers(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line `argv` (default sys.argv[1:]); returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        args.run(args)
        shutdown()
    except DdimError as e:  # what a user can cause; anything else is a bug and keeps its traceback
        print(f"ddim {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"ddim {args.command}: interrupted", file=sys.stderr)
        return 130
    return 0
