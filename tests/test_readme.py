"""Every command block of the README runs as written, in order, in a temporary folder, at tiny
sizes: the counts a user would choose (--steps, --n, --calls, ...) are lowered, nothing else is
changed. `ddim` lines run through `ddim.cli.main` in this process (what the `ddim` script calls,
without a torch import per line), `python -c` lines in a subprocess; set-up lines (./dev, pip,
source, torchrun, benchmark scripts) are skipped."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from ddim.cli import main

README = Path(__file__).resolve().parents[1] / "README.md"
# flag -> the tiny value it takes in the test
TINY = {"--steps": "2", "--n": "4", "--num-samples": "4", "--calls": "2", "--batch-size": "4"}
# flags a command gets when its README line leaves them at a default too slow for a test
EXTRA = {
    "bench-samplers": {"--n": "4", "--samplers": "ddim"},
    "tune": {"--n": "4", "--reference-steps": "8", "--max-evals": "4"},
    "eval": {"--n-reference": "64"},
}


def readme_commands() -> list[list[str]]:
    """The command lines of the README's ```bash blocks, continuation lines joined, comments
    dropped, as argument lists."""
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", README.read_text(), re.S):
        for line in block.replace("\\\n", " ").splitlines():
            words = shlex.split(line, comments=True)
            if words and (words[0] == "ddim" or words[:2] == ["python", "-c"]):
                commands.append(words)
    return commands


def tiny(words: list[str]) -> list[str]:
    """`ddim ARGS` -> ARGS with the counts lowered."""
    args = [TINY[prev] if prev in TINY else word for prev, word in zip(["", *words], words)][1:]
    for flag, value in EXTRA.get(args[0], {}).items():
        if flag not in args:
            args += [flag, value]
    return args


def test_readme_has_the_commands_it_promises():
    commands = {words[1] for words in readme_commands() if words[0] == "ddim"}
    for command in ("train", "sample", "invert", "interpolate", "edit", "inpaint", "eval", "tune"):
        assert command in commands, f"the README shows no `ddim {command}` line"


@pytest.mark.slow
def test_every_readme_command_runs_as_written(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    for words in readme_commands():
        if words[0] == "python":
            done = subprocess.run([sys.executable, *words[1:]], capture_output=True, text=True, timeout=60)
            assert done.returncode == 0, f"{shlex.join(words)}\n{done.stderr[-2000:]}"
            continue
        args = tiny(words)
        status = main(args)
        error = capsys.readouterr().err[-2000:]
        assert status == 0, f"{shlex.join(words)}\n-> ddim {shlex.join(args)}\n{error}"
