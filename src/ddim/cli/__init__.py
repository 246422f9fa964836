"""The `ddim` command (also `python -m ddim`): train, sample, invert, interpolate, demo, eval,
bench-samplers.

Every subcommand has --help, --dry-run (print the resolved configuration as JSON, do no work),
--config FILE (flag values from a TOML or JSON file, such as the one --dry-run prints; flags given
override them) and --quiet (no progress bars, no info lines). A user's error (a
`ddim.errors.DdimError`, or an OSError that the user's disk or paths caused: disk full,
permission denied, ...) exits with status 2 and one line on stderr; a training run stopped by
SIGINT or SIGTERM saves its last completed step and exits 130 or 143. Any other exception keeps
its traceback: it is a bug in ddim. Output cut short by a closed pipe (`ddim ... --dry-run |
head -1`) ends quietly with status 141, as a shell's SIGPIPE does.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import warnings
from collections.abc import Sequence
from typing import NoReturn

from ddim import __version__
from ddim.cli import edit, evaluate, generate, train, tune
from ddim.device import choose_threads
from ddim.distributed import shutdown
from ddim.errors import DdimError, from_os_error


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line: `ddim sample: error: ...`."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="ddim",
        description="Denoising diffusion models: DDPM training, DDIM sampling, inversion and interpolation.",
    )
    parser.add_argument("--version", action="version", version=f"ddim {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    train.add_parsers(commands)
    generate.add_parsers(commands)
    edit.add_parsers(commands)
    evaluate.add_parsers(commands)
    tune.add_parsers(commands)
    return parser


def _one_line_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """ddim's own warnings (a skipped damaged checkpoint, ...) as one line on stderr."""
    print(f"ddim: warning: {message}", file=sys.stderr if file is None else file)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line `argv` (default sys.argv[1:]); returns the exit status: 0, 2 for a
    user's error (a DdimError, or an OSError from the user's disk or paths, see
    `ddim.errors.from_os_error`), 130 / 143 for a run stopped by SIGINT / SIGTERM after saving,
    141 when stdout was closed early. Any other exception propagates with its traceback: it is a
    bug in ddim."""
    try:
        try:
            return _run(argv)
        finally:
            sys.stdout.flush()  # a reader that left (`| head -1`) shows here, not at exit
    except BrokenPipeError:
        # the standard way (Python docs, "Note on SIGPIPE"): later writes and the flush at exit go nowhere
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141  # 128 + SIGPIPE (13), the status a shell reports for a command its pipe ended


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    """The command line, with --config FILE's values as the defaults of the flags not given:
    the first parse reads the file into the command's defaults, the second applies them."""
    parser = build_parser()
    args = parser.parse_args(argv)
    return parser.parse_args(argv) if getattr(args, "config", None) else args


def _run(argv: Sequence[str] | None) -> int:
    args = _parse(argv)
    if hasattr(signal, "SIGXFSZ"):  # past `ulimit -f`, a write fails with EFBIG instead of killing us
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    try:
        choose_threads()  # from the CPUs this process may use and the load (ddim.device)
        with warnings.catch_warnings():
            warnings.showwarning = _one_line_warning
            args.run(args)
        shutdown()
    except DdimError as e:  # what a user can cause; anything else is a bug and keeps its traceback
        print(f"ddim {args.command}: error: {e}", file=sys.stderr)
        return e.exit_status
    except OSError as e:
        error = from_os_error(e)
        if error is None:
            raise
        print(f"ddim {args.command}: error: {error}", file=sys.stderr)
        return error.exit_status
    except KeyboardInterrupt:
        print(f"ddim {args.command}: interrupted", file=sys.stderr)
        return 130
    return 0
