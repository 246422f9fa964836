"""`--config FILE`: a TOML or JSON file of flag values that a command takes as its defaults (flags
given on the command line override them). The keys are the flags' long names, with underscores or
dashes (`batch_size` or `batch-size`); a value is what the flag takes: a number or a string read
as the flag reads its text, true or false for a switch, a list for a flag of several values
(`seeds = [0, 1]`, `channel_mult = [1, 2, 2]`); null leaves the flag at its default.

`--dry-run` prints such a file (JSON): every flag with its resolved value, `command`, and `run`,
what those values resolve to (the RunConfig, the checkpoint), which is there to read and which
this reader skips. An unknown key, a value the flag refuses, another command's file or an
unreadable file stops the command with one line naming the file and the key."""

from __future__ import annotations

import argparse
import difflib
import json
from pathlib import Path
from typing import Any

from ddim.errors import BadFile, DdimError, MissingFile

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: JSON only
    tomllib = None

NOT_FLAGS = ("run", "config", "dry_run", "help", "version")  # never read from, nor printed into, a file
SHOWN_ONLY = "run"  # the key --dry-run adds for reading; skipped here


def read_config_file(path: str | Path) -> dict[str, Any]:
    """The table of a .toml or .json file, or a one-line BadFile / MissingFile naming it."""
    path = Path(path)
    kind = path.suffix.lower()
    if kind not in (".toml", ".json"):
        raise BadFile(f"--config {path}: expected a .toml or .json file (by its extension)")
    if kind == ".toml" and tomllib is None:
        raise BadFile(f"--config {path}: reading TOML needs Python 3.11 or later; write the file as .json")
    if not path.is_file():
        raise MissingFile(f"--config {path} does not exist or is not a file; pass a .toml or .json file")
    try:
        text = path.read_text(encoding="utf-8")
        table = tomllib.loads(text) if kind == ".toml" else json.loads(text)
    except OSError as e:
        raise BadFile(f"--config {path}: cannot read it ({e.strerror}); check its permissions") from None
    except UnicodeDecodeError:
        raise BadFile(f"--config {path} is not UTF-8 text; save it as UTF-8") from None
    except ValueError as e:  # json.JSONDecodeError and tomllib.TOMLDecodeError
        raise BadFile(f"--config {path} is not valid {kind[1:].upper()}: {e}; fix it there") from None
    if not isinstance(table, dict):
        raise BadFile(
            f"--config {path}: expected a table of flag names and values, got {type(table).__name__}"
        )
    return table


def _flags(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    """Key -> the option it sets: each long flag's name with underscores, and its dest."""
    keys = {}
    for action in parser._actions:
        if action.option_strings and action.dest not in NOT_FLAGS:
            for option in action.option_strings:
                if option.startswith("--"):
                    keys[option[2:].replace("-", "_")] = action
            keys.setdefault(action.dest, action)
    return keys


def _value(action: argparse.Action, value: Any) -> Any:
    """`value` as the option holds it, read as the flag reads its text; ValueError if refused."""
    if action.nargs == 0:  # a switch
        if not isinstance(value, bool):
            raise ValueError(f"expected true or false, got {value!r}")
        return value
    if isinstance(action.nargs, int) or action.nargs in ("+", "*"):
        if not isinstance(value, list):
            raise ValueError(f"expected a list, got {value!r}")
        count = action.nargs if isinstance(action.nargs, int) else len(value)
        if len(value) != count:
            raise ValueError(f"expected a list of {count} values, got {len(value)}")
        return [_one(action, v) for v in value]
    return _one(action, value)


def _one(action: argparse.Action, value: Any) -> Any:
    scalar = (str, int, float)
    if (
        isinstance(value, list)
        and action.type is not None
        and all(isinstance(v, scalar) and not isinstance(v, bool) for v in value)
    ):
        text = ",".join(map(str, value))  # the comma-separated flags: --channel-mult 1,2,2, --calls 5,10
    elif isinstance(value, scalar) and not isinstance(value, bool):
        text = str(value)
    else:
        raise ValueError(f"expected a number or a string, got {value!r}")
    try:
        converted = action.type(text) if action.type is not None else text
    except argparse.ArgumentTypeError as e:
        raise ValueError(str(e)) from None
    if action.choices is not None and converted not in action.choices:
        raise ValueError(f"expected one of {', '.join(map(str, action.choices))}, got {value!r}")
    return converted


def config_defaults(parser: argparse.ArgumentParser, path: str | Path) -> dict[str, Any]:
    """dest -> value of each key of `path`, checked against the options of `parser` (one command)."""
    command = parser.prog.split()[-1]
    flags = _flags(parser)
    defaults = {}
    for key, value in read_config_file(path).items():
        name = key.replace("-", "_")
        if name == "command":
            if value != command:
                raise BadFile(
                    f"--config {path} is a configuration of `ddim {value}`, not of `ddim {command}`"
                )
            continue
        if name == SHOWN_ONLY or value is None:
            continue
        if name not in flags:
            close = difflib.get_close_matches(name, flags, n=1)
            hint = f"did you mean {close[0]!r}?" if close else f"see ddim {command} --help for its flags"
            raise BadFile(f"--config {path}: unknown key {key!r} for ddim {command}; {hint}")
        action = flags[name]
        try:
            defaults[action.dest] = _value(action, value)
        except ValueError as e:
            raise BadFile(f"--config {path}: key {key!r} ({action.option_strings[-1]}): {e}") from None
    return defaults


class ConfigAction(argparse.Action):
    """--config FILE: the file's values become the command's defaults and its required flags
    optional when the file gives them; `ddim.cli.main` parses again with them in place. A file it
    cannot use ends the parse as a bad flag does: `ddim train: error: --config ...`, status 2."""

    def __call__(self, parser, namespace, path, option_string=None) -> None:
        try:
            defaults = config_defaults(parser, path)
        except DdimError as e:
            parser.exit(e.exit_status, f"{parser.prog}: error: {e}\n")
        parser.set_defaults(**defaults)
        for action in parser._actions:
            if action.dest in defaults:
                action.required = False
                if action.nargs == 0 and defaults[action.dest]:  # a switch the file turns on acts
                    action(parser, namespace, None, action.option_strings[-1])  # as given (--resume)
        setattr(namespace, self.dest, path)


def flag_values(args: argparse.Namespace) -> dict[str, Any]:
    """The options of a parsed command line, keyed as a config file keys them."""
    return {k: v for k, v in vars(args).items() if k not in NOT_FLAGS}
