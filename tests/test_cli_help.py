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


def _shows_default(action: argparse.Action) -> bool:
    """Whether --help can tell the user the option's default: there is none to tell (None, off,
    an empty list) or its help text says it."""
    nothing = any(action.default is none for none in (None, False, argparse.SUPPRESS))  # 0 == False: `is`
    return nothing or "default" in (action.help or "")


@pytest.mark.parametrize("name", list(commands()))
def test_every_default_is_shown(name):
    hidden = [
        a.option_strings[0] for a in commands()[name]._actions if a.option_strings and not _shows_default(a)
    ]
    assert not hidden, f"ddim {name} --help does not show the default of {', '.join(hidden)}"


def test_the_rule_sees_a_default_left_unsaid():
    parser = argparse.ArgumentParser()
    said, unsaid = (
        parser.add_argument("--a", default=0, help="a (default 0)"),
        parser.add_argument("--b", default=0.0),  # 0.0 == False, yet a default
    )
    assert _shows_default(said) and not _shows_default(unsaid)


def test_usage_marks_data_required_and_resume_lifts_it(trained_run, capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    usage = capsys.readouterr().out.split("\n\n")[0]
    assert " --data DATA " in usage and "[--data DATA]" not in usage
    with pytest.raises(SystemExit) as exit_:
        main(["train", "--out", "somewhere"])
    assert exit_.value.code == 2 and "required: --data" in capsys.readouterr().err
    assert main(["train", "--out", str(trained_run), "--resume", "--dry-run"]) == 0  # the checkpoint's data


@pytest.mark.parametrize("name", list(commands()))
def test_every_command_shows_an_example_and_takes_the_common_flags(name):
    parser = commands()[name]
    assert f"Example: ddim {name} " in parser.description
    flags = {flag for action in parser._actions for flag in action.option_strings}
    assert {"--config", "--dry-run", "--quiet", "--device"} <= flags
