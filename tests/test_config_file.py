"""`--config FILE` (ddim.cli.config_file): what `--dry-run` prints reads back as the identical
resolved configuration (train and sample), TOML and JSON give the same, flags given override the
file, the file may give required flags (--data, --checkpoint) and switches (--resume), and every
bad file ends with exit 2 and one line naming the file and the key. In-process through
`ddim.cli.main`; the defaults are never spelled out here (the dataclasses own them)."""

from __future__ import annotations

import json

import pytest
from conftest import QUIET_TRAIN, TINY_TRAIN
from PIL import Image

from ddim.cli import main
from ddim.config import TrainConfig


def run(*argv: object) -> int:
    try:
        return main([str(a) for a in argv])
    except SystemExit as e:
        return e.code


def dry_run(capsys, *argv: object) -> str:
    capsys.readouterr()
    assert run(*argv, "--dry-run") == 0, capsys.readouterr().err
    return capsys.readouterr().out


def test_train_dry_run_reads_back_as_the_same_run(tmp_path, capsys):
    argv = ["train", "--data", "digits", "--out", tmp_path / "r", *TINY_TRAIN, *QUIET_TRAIN, "--steps", 7]
    printed = dry_run(capsys, *argv, "--lr", "0.003", "--flip")
    (tmp_path / "run.json").write_text(printed)
    assert dry_run(capsys, "train", "--config", tmp_path / "run.json") == printed
    config = json.loads(printed)
    # every flag at its resolved value (defaults included), the RunConfig under "run"
    assert config["batch_size"] == 8 and config["flip"] is True and config["lr"] == 0.003
    assert config["ema_decay"] == config["run"]["train"]["ema_decay"] == TrainConfig().ema_decay
    assert config["channel_mult"] == [1, 2] == config["run"]["model"]["channel_mult"]


def test_flags_given_override_the_file(tmp_path, capsys):
    (tmp_path / "run.toml").write_text(f'data = "digits"\nout = "{tmp_path / "r"}"\nsteps = 7\nlr = 0.003\n')
    config = json.loads(dry_run(capsys, "train", "--config", tmp_path / "run.toml", "--steps", 9))
    assert (config["steps"], config["lr"]) == (9, 0.003)  # the flag over the file, the file over the default


def test_toml_and_json_with_either_spelling_give_the_same(tmp_path, capsys):
    out = tmp_path / "r"
    (tmp_path / "a.toml").write_text(f'data = "digits"\nout = "{out}"\nchannel-mult = [1, 2]\nsize = 8\n')
    (tmp_path / "b.json").write_text(json.dumps({"data": "digits", "out": str(out), "channel_mult": "1,2",
                                                 "size": "8"}))  # fmt: skip
    flags = dry_run(capsys, "train", "--data", "digits", "--out", out, "--channel-mult", "1,2", "--size", 8)
    assert dry_run(capsys, "train", "--config", tmp_path / "a.toml") == flags
    assert dry_run(capsys, "train", "--config", tmp_path / "b.json") == flags


def test_sample_dry_run_reads_back_as_the_same_options(trained_run, tmp_path, capsys):
    argv = ["sample", "--checkpoint", trained_run, "--n", 5, "--steps", 4, "--eta", 0.5, "--class", 0]
    printed = dry_run(capsys, *argv, "--seed", 3, "--clip", "none")
    (tmp_path / "sample.json").write_text(printed)
    assert dry_run(capsys, "sample", "--config", tmp_path / "sample.json") == printed
    config = json.loads(printed)
    assert (config["n"], config["seed"], config["label"], config["clip"]) == (5, 3, 0, "none")
    # the default clip, printed as "checkpoint", reads back too
    printed = dry_run(capsys, "sample", "--checkpoint", trained_run)
    (tmp_path / "default.json").write_text(printed)
    assert json.loads(printed)["clip"] == "checkpoint"
    assert dry_run(capsys, "sample", "--config", tmp_path / "default.json") == printed


# each command with the flags it needs and one more, for the round trip
ARGV = {
    "train": ["--data", "digits", "--out", "{tmp}/r", "--steps", "7"],
    "demo": ["--out", "{tmp}/d", "--train-steps", "3"],
    "sample": ["--checkpoint", "{run}", "--n", "3"],
    "invert": ["--checkpoint", "{run}", "--images", "{tmp}/images", "--refine", "2", "--sampler", "ddim"],
    "interpolate": ["--checkpoint", "{run}", "--seeds", "1", "2"],
    "edit": ["--checkpoint", "{run}", "--images", "{tmp}/images", "--strength", "0.5"],
    "inpaint": ["--checkpoint", "{run}", "--images", "{tmp}/images", "--mask", "{tmp}/m.png"],
    "eval": ["--samples", "{tmp}/s.npz", "--reference", "digits", "--cache-dir", ""],
    "bench-samplers": [
        "--checkpoint",
        "{run}",
        "--reference",
        "digits",
        "--out",
        "{tmp}/b",
        "--calls",
        "3,6",
    ],
    "tune": ["--checkpoint", "{run}", "--calls", "3"],
}


def test_every_command_is_in_the_round_trip():
    from test_cli_help import commands

    assert set(ARGV) == set(commands())


@pytest.mark.parametrize("command", list(ARGV))
def test_every_dry_run_reads_back_as_the_same(command, trained_run, tmp_path, capsys):
    (tmp_path / "images").mkdir()
    Image.new("L", (8, 8), 128).save(tmp_path / "images" / "a.png")
    argv = [a.format(tmp=tmp_path, run=trained_run) for a in ARGV[command]]
    printed = dry_run(capsys, command, *argv)
    (tmp_path / "config.json").write_text(printed)
    assert dry_run(capsys, command, "--config", tmp_path / "config.json") == printed
    assert not (tmp_path / "r").exists() and not (tmp_path / "d").exists() and not (tmp_path / "b").exists()


def test_a_resume_from_a_file_needs_no_data(trained_run, tmp_path, capsys):
    (tmp_path / "resume.json").write_text(json.dumps({"out": str(trained_run), "resume": True, "steps": 5}))
    config = json.loads(dry_run(capsys, "train", "--config", tmp_path / "resume.json"))
    assert config["resume"] is True and config["run"]["train"]["steps"] == 5
    assert config["data"] == "digits"  # from the checkpoint


def test_other_commands_read_a_file_too(trained_run, tmp_path, capsys):
    (tmp_path / "interp.toml").write_text(f'checkpoint = "{trained_run}"\nseeds = [4, 5]\nn = 3\n')
    config = json.loads(dry_run(capsys, "interpolate", "--config", tmp_path / "interp.toml"))
    assert (config["seeds"], config["n"]) == ([4, 5], 3)


@pytest.mark.parametrize(
    "name, text, message",
    [
        (
            "a.toml",
            'data = "digits"\nstepz = 3\n',
            "unknown key 'stepz' for ddim train; did you mean 'steps'?",
        ),
        ("a.toml", 'data = "digits"\nsteps = 0\n', "key 'steps' (--steps): must be a positive integer"),
        ("a.toml", 'data = "digits"\nsteps = 1.5\n', "key 'steps' (--steps): expected a positive integer"),
        ("a.toml", 'data = "digits"\nflip = "yes"\n', "key 'flip' (--flip): expected true or false"),
        ("a.toml", 'data = "digits"\nprediction = "z"\n', "key 'prediction' (--prediction): expected one of"),
        ("a.toml", "data = { name = 1 }\n", "key 'data' (--data): expected a number or a string"),
        ("a.toml", "data = [digits\n", "is not valid TOML"),
        ("a.json", '{"data": "digits",}', "is not valid JSON"),
        ("a.json", "[1, 2]", "expected a table of flag names and values, got list"),
        ("a.json", '{"command": "sample"}', "is a configuration of `ddim sample`, not of `ddim train`"),
        ("a.yaml", "data: digits\n", "expected a .toml or .json file"),
        ("a.toml", "\udcff", "is not UTF-8 text"),
    ],
)
def test_a_bad_file_is_one_line_naming_it_and_the_key(tmp_path, capsys, name, text, message):
    path = tmp_path / name
    path.write_bytes(text.encode("utf-8", "surrogateescape"))
    assert run("train", "--out", tmp_path / "r", "--config", path, "--dry-run") == 2
    err = capsys.readouterr().err
    assert err.startswith(f"ddim train: error: --config {path}"), err
    assert message in err and len(err.strip().splitlines()) == 1, err


def test_a_missing_file_is_one_line(tmp_path, capsys):
    assert run("sample", "--config", tmp_path / "none.toml", "--dry-run") == 2
    err = capsys.readouterr().err
    assert err.startswith(f"ddim sample: error: --config {tmp_path / 'none.toml'} does not exist"), err
    assert len(err.strip().splitlines()) == 1


def test_the_command_reads_its_dry_run_back_in_a_subprocess(tmp_path):
    """As a user runs it: `ddim train ... --dry-run > a.json`, then `--config a.json` resolves to
    the same; a file with an unknown key exits 2 with one line naming the file and the key."""
    import subprocess
    import sys

    def ddim(*argv: str) -> subprocess.CompletedProcess:
        command = [sys.executable, "-m", "ddim", *argv]
        return subprocess.run(command, capture_output=True, text=True, cwd=tmp_path, timeout=120)

    first = ddim("train", "--data", "digits", "--out", "runs/a", "--steps", "7", "--lr", "3e-4", "--dry-run")
    assert first.returncode == 0, first.stderr
    (tmp_path / "a.json").write_text(first.stdout)
    again = ddim("train", "--config", "a.json", "--dry-run")
    assert again.returncode == 0 and again.stdout == first.stdout, again.stderr
    (tmp_path / "bad.toml").write_text('data = "digits"\nout = "runs/b"\nstpes = 7\n')
    bad = ddim("train", "--config", "bad.toml")
    assert bad.returncode == 2 and bad.stdout == ""
    assert len(bad.stderr.strip().splitlines()) == 1 and "bad.toml" in bad.stderr and "stpes" in bad.stderr
