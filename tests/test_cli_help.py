"""`--help` of every `ddim` command, found by walking the parser (commands added later are
included): it formats (a stray % in a help text raises only here), exits 0, and lists every flag
with a help text."""

from __future__ import annotations

import argparse

import pytest

from ddim.cli import build_parser, main


def commands() -> dict[str, argparse.ArgumentParser]:
    action = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def test_there_are_commands_to_walk():
    assert {"train", "sample", "eval"} <= set(commands())


@pytest.mark.parametrize("name", ["", *commands()])
def test_help_of_every_command(name, capsys):
    argv = [name, "--help"] if name else ["--help"]
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    out = capsys.readouterr().out
    assert exit_.value.code == 0 and out.startswith(f"usage: ddim {name}".rstrip())
    if not name:
        assert all(command in out for command in commands())
        return
    for action in commands()[name]._actions:
        if action.option_strings and action.help != argparse.SUPPRESS:
            assert action.help, f"ddim {name} {action.option_strings[0]} has no help text"
            assert any(flag in out for flag in action.option_strings)
