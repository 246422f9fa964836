"""Fault injection: kill -9, SIGTERM, SIGINT, two writers, a full disk, read-only folders and
paths in the way, a failing image, a diverging loss. Each case asserts that nothing was lost (the
files are there, the checkpoints whole, a resume bitwise equal to a run that never stopped) and
that a user's error is one line on stderr, without a traceback, with the right exit status (2;
130 / 143 for signals). Runs are tiny (8x8 digits, an 8-channel UNet, a few steps); only the
cases that need a real process (kill -9, SIGTERM, file-size limits, dropped root powers) start
one. Damaged files and absurd values: test_damaged_files.py."""

from __future__ import annotations

import os
import random
import re
import resource
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from ddim.cli import main
from ddim.data import WrappedDataset, load_dataset
from ddim.errors import BadFile, NonFinite
from ddim.training import train
from ddim.training.checkpoint import list_checkpoints, load_checkpoint

TINY = ["--data", "digits", "--size", "8", "--base-channels", "8", "--channel-mult", "1,2"]
TINY += ["--batch-size", "8", "--timesteps", "50", "--sample-steps", "5", "--sample-every", "0"]
TINY += ["--device", "cpu"]
STEPS = 6
PROGRESS = re.compile(r"\s*\d+%\|")  # a tqdm line
SUBPROCESS_ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}


def run(*argv: object) -> int:
    """`ddim argv...` in-process; the exit status, whether returned or raised by argparse."""
    try:
        return main([str(a) for a in argv])
    except SystemExit as e:
        return e.code


def one_line(err: str) -> str:
    """stderr of a refused command: exactly one line, no traceback (besides the progress bar)."""
    lines = [line for line in re.split(r"[\r\n]+", err) if line.strip() and not PROGRESS.match(line)]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def weights(checkpoint: Path) -> dict[str, torch.Tensor]:
    ema = {"ema." + k: v for k, v in load_file(checkpoint / "ema.safetensors").items()}
    return {**load_file(checkpoint / "model.safetensors"), **ema}


def step_of(checkpoint: Path) -> int:
    return int(checkpoint.name.split("-")[1])


def ckpt(out: Path, step: int) -> Path:
    return out / "checkpoints" / f"step-{step:06d}"


def assert_same(a: Path, b: Path) -> None:
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa), f"{a} != {b}"


def assert_whole(out: Path, killed: bool = False) -> None:
    """Every checkpoint of a run loads, and no partial folder is left (after kill -9, one hidden
    .tmp-step-* folder may be: the next run on the folder removes it)."""
    for checkpoint in list_checkpoints(out / "checkpoints"):
        load_checkpoint(checkpoint)
    assert len(list((out / "checkpoints").glob(".tmp-*"))) <= killed


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """The uninterrupted run: STEPS steps, a checkpoint after each."""
    out = tmp_path_factory.mktemp("reference") / "run"
    argv = ["--steps", STEPS, "--checkpoint-every", 1, "--keep-last", 0, "--log-every", 1]
    assert run("train", *TINY, "--out", out, *argv) == 0
    return out


def start(out: Path, *extra: object, preexec_fn=None, prefix=()) -> subprocess.Popen:
    argv = [*prefix, sys.executable, "-m", "ddim", "train", *TINY, "--out", out, "--log-every", 1, *extra]
    return subprocess.Popen(
        [str(a) for a in argv],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=SUBPROCESS_ENV,
        preexec_fn=preexec_fn,
    )


def wait_for(condition, process: subprocess.Popen, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def logged_steps(out: Path) -> int:
    try:
        return max(len((out / "log.csv").read_text().splitlines()) - 1, 0)
    except OSError:
        return 0


# ---- kill -9, signals, two writers -----------------------------------------------------------
@pytest.mark.parametrize("seed", [0, 1])
def test_kill_9_at_a_random_point_then_resume_is_bitwise_exact(tmp_path, reference, seed):
    out = tmp_path / "run"
    process = start(out, "--steps", STEPS, "--checkpoint-every", 1)
    wait_for(lambda: list_checkpoints(out / "checkpoints"), process)
    time.sleep(random.Random(seed).uniform(0, 0.4))
    process.kill()
    process.communicate()
    assert_whole(out, killed=True)
    assert run("train", "--out", out, "--resume") == 0
    assert_whole(out)
    assert_same(ckpt(out, STEPS), ckpt(reference, STEPS))


def _resumes_exactly(out: Path, line: str, name: str, tmp_path: Path) -> None:
    """After a stop by signal `name` with --checkpoint-every 0: its one line, the one checkpoint
    it saved, and a resume from it equal to a run that never stopped, log lines included."""
    assert f"stopped by {name}: saved step" in line and "--resume" in line
    saved = list_checkpoints(out / "checkpoints")
    assert len(saved) == 1
    assert_whole(out)
    end = step_of(saved[0]) + 2  # the total steps do not enter the training (the LR schedule neither)
    assert run("train", "--out", out, "--resume", "--steps", end) == 0
    assert run("train", *TINY, "--out", tmp_path / "whole", "--steps", end, "--log-every", 0) == 0
    assert_same(ckpt(out, end), ckpt(tmp_path / "whole", end))
    rows = (out / "log.csv").read_text().splitlines()[1:]
    assert [int(r.split(",")[0]) for r in rows] == list(range(1, end + 1))  # no line lost, none twice


def test_sigterm_saves_the_last_step_and_a_second_writer_is_refused(tmp_path, capsys):
    """With --checkpoint-every 0 nothing would be saved before the end: the signal saves. While
    it runs, a second writer on the same folder is refused."""
    out = tmp_path / "run"
    process = start(out, "--steps", 200, "--checkpoint-every", 0)
    wait_for(lambda: logged_steps(out) >= 2, process)
    assert run("train", *TINY, "--out", out, "--steps", 3) == 2  # two writers
    line = one_line(capsys.readouterr().err)
    assert f"{out} is being trained by pid {process.pid}" in line
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 143
    _resumes_exactly(out, one_line(err), "SIGTERM", tmp_path)


def test_ctrl_c_saves_the_last_step(tmp_path, capsys):
    """SIGINT, in this process: exit status 130 and the same guarantees."""
    out = tmp_path / "run"

    def interrupt():
        deadline = time.monotonic() + 60
        while logged_steps(out) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        os.kill(os.getpid(), signal.SIGINT)

    thread = threading.Thread(target=interrupt)
    thread.start()
    status = run("train", *TINY, "--out", out, "--steps", 200, "--checkpoint-every", 0, "--log-every", 1)
    thread.join()
    assert status == 130
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # handlers restored
    _resumes_exactly(out, one_line(capsys.readouterr().err), "SIGINT", tmp_path)


def test_a_stale_lock_file_is_reused(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / ".ddim-lock").write_text("pid 999999 on a machine that crashed")  # nobody holds it
    assert run("train", *TINY, "--out", out, "--steps", 1) == 0


# ---- disks and folders ---------------------------------------------------------------------
def _limit_file_size():
    resource.setrlimit(resource.RLIMIT_FSIZE, (20_000, 20_000))  # ulimit -f: files up to 20 kB


def test_a_full_disk_is_one_line_and_loses_nothing(tmp_path, reference):
    out = tmp_path / "run"
    shutil.copytree(reference / "checkpoints" / "step-000002", out / "checkpoints" / "step-000002")
    shutil.copy(reference / "ddim-run.json", out)
    process = start(out, "--resume", "--steps", STEPS, "--checkpoint-every", 1, preexec_fn=_limit_file_size)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 2
    line = one_line(err)
    assert "File too large" in line and "raise it or free space" in line and "step-000002" in line
    assert [p.name for p in list_checkpoints(out / "checkpoints")] == ["step-000002"]
    assert_whole(out)
    assert run("train", "--out", out, "--resume", "--steps", STEPS) == 0  # with room again, exact
    assert_same(ckpt(out, STEPS), ckpt(reference, STEPS))


# root ignores permissions: drop that power (CAP_DAC_OVERRIDE) from the child
AS_USER = ["setpriv", "--bounding-set", "-dac_override,-dac_read_search", "--"] if os.geteuid() == 0 else []


@pytest.mark.skipif(AS_USER and not shutil.which("setpriv"), reason="needs setpriv to drop root's powers")
def test_a_read_only_folder_is_refused_before_the_work(tmp_path):
    import tempfile

    base = Path(tempfile.mkdtemp(prefix="ddim-ro-"))
    try:
        base.chmod(0o755)
        folder = base / "run"
        folder.mkdir()
        folder.chmod(0o555)  # read-only, for everyone but root
        process = start(folder / "sub", "--steps", 1, prefix=AS_USER)
        _, err = process.communicate(timeout=120)
        assert process.returncode == 2
        assert f"cannot use {folder / 'sub'}: Permission denied" in one_line(err)
        assert list(folder.iterdir()) == []
        file = base / "file"
        file.write_text("a file, not a folder")
        assert run("train", *TINY, "--out", file / "run", "--steps", 1) == 2  # a path under a file
    finally:
        shutil.rmtree(base, ignore_errors=True)


def test_demo_deletes_only_what_it_wrote(tmp_path, capsys):
    mine = tmp_path / "run" / "thesis.tex"
    mine.parent.mkdir()
    mine.write_text("years of work")
    assert run("demo", "--out", tmp_path, "--train-steps", 1, "--steps", 2, "--device", "cpu") == 2
    assert "not a ddim run folder" in one_line(capsys.readouterr().err) and mine.is_file()
    (tmp_path / "run" / "ddim-run.json").write_text('{"format": "ddim-run", "version": 1}')
    assert run("demo", "--out", tmp_path, "--train-steps", 1, "--steps", 2, "--device", "cpu") == 2
    assert "holds thesis.tex" in one_line(capsys.readouterr().err) and mine.is_file()


# ---- failures inside a step ------------------------------------------------------------------
class Failing(torch.utils.data.Dataset):
    """Digits read one by one (the DataLoader path) where example `bad` fails to decode."""

    def __init__(self, images, bad=None):
        self.images, self.bad = images, bad

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        if i == self.bad:
            raise BadFile(f"image {i}.png cannot be decoded; replace or remove it")
        return self.images[i]


def _tiny_run(steps: int, **train_options):
    from test_training import tiny_run

    return tiny_run(steps=steps, **train_options)


def test_an_image_that_fails_mid_run_saves_the_last_step(tmp_path):
    digits = load_dataset("digits", size=8).images[:200]
    good = WrappedDataset(Failing(digits))
    bad = WrappedDataset(Failing(digits, bad=1))  # 1 is not among the fingerprinted examples
    run_config = _tiny_run(30, checkpoint_every=0)  # 240 examples: example 1 is drawn
    with pytest.raises(BadFile, match=r"1\.png cannot be decoded.*saved step \d+ in") as caught:
        train(run_config, tmp_path / "cut", progress=False, dataset=bad)
    assert "\n" not in str(caught.value)
    saved = list_checkpoints(tmp_path / "cut" / "checkpoints")
    assert len(saved) == 1 and saved[0].name != "step-000000"
    end = train(run_config, tmp_path / "cut", resume=True, progress=False, dataset=good)
    whole = train(run_config, tmp_path / "whole", progress=False, dataset=good)
    assert_same(end, whole)


def test_a_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    from ddim.training import loop

    real, calls = loop.backward_in_parts, []

    def diverge_at_step_5(loss_of, parts, generator, params):  # one call a step (no grad_accum)
        calls.append(1)
        if len(calls) == 5:
            return real(lambda j, gen: loss_of(j, gen) * float("nan"), parts, generator, params)
        return real(loss_of, parts, generator, params)

    monkeypatch.setattr(loop, "backward_in_parts", diverge_at_step_5)
    with pytest.raises(NonFinite, match=r"loss at step 5 is not finite.*saved step 4 in") as caught:
        train(_tiny_run(8, checkpoint_every=3), tmp_path, progress=False)
    assert "\n" not in str(caught.value)
    saved = list_checkpoints(tmp_path / "checkpoints")
    assert [step_of(c) for c in saved] == [3, 4]
    for checkpoint in saved:
        assert all(torch.isfinite(t).all() for t in weights(checkpoint).values())


def test_non_finite_weights_are_never_saved(tmp_path, monkeypatch):
    from ddim.training import loop

    real = loop.ema_update

    def poison(ema, params, decay):
        real(ema, params, decay)
        ema[0].fill_(float("inf"))

    monkeypatch.setattr(loop, "ema_update", poison)
    with pytest.raises(NonFinite, match="weights became non-finite by step 1"):
        train(_tiny_run(2, checkpoint_every=1), tmp_path, progress=False)
    assert not list_checkpoints(tmp_path / "checkpoints")


def test_the_lock_is_per_process_and_released_on_exit(tmp_path):
    from ddim.errors import RunBusy
    from ddim.training.run_folder import RunFolder, remove_run

    with RunFolder(tmp_path / "run", fresh=True):
        with pytest.raises(RunBusy, match=f"{tmp_path / 'run'} is being trained by pid {os.getpid()}"):
            RunFolder(tmp_path / "run", fresh=False).__enter__()
        with pytest.raises(RunBusy):
            remove_run(tmp_path / "run")
    remove_run(tmp_path / "run")  # released: the run (only ddim's files) may go
    assert not (tmp_path / "run").exists()


def _file(out: Path) -> None:
    out.write_text("a file where the run folder goes")


def _log_folder(out: Path) -> None:
    (out / "log.csv").mkdir(parents=True)
    (out / "ddim-run.json").write_text('{"format": "ddim-run", "version": 1}')


def _foreign_log(out: Path) -> None:
    out.mkdir()
    (out / "log.csv").write_text("my own notes")


@pytest.mark.parametrize(
    "make, message",
    [
        (_file, "a file is where a folder should go"),
        (_log_folder, "log.csv: Is a directory; a folder is where a file should go"),
        (_foreign_log, "holds log.csv that ddim's training did not write"),
    ],
    ids=["out is a file", "log.csv is a folder", "another program's log.csv"],
)
def test_paths_in_the_way_are_one_line_and_left_alone(tmp_path, make, message, capsys):
    out = tmp_path / "run"
    make(out)
    before = sorted(p.name for p in out.iterdir()) if out.is_dir() else out.read_text()
    assert run("train", *TINY, "--out", out, "--steps", 1) == 2
    assert message in one_line(capsys.readouterr().err)
    if out.is_dir():
        assert {".ddim-lock", "checkpoints"} | set(before) >= {p.name for p in out.iterdir()}
        if (out / "log.csv").is_file():
            assert (out / "log.csv").read_text() == "my own notes"
    else:
        assert out.read_text() == before
