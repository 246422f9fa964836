"""Damaged files and absurd values, each refused with one line (exit 2) or skipped with one
warning line, nothing lost: config.json of the wrong type or range or missing a key, a malformed
state.pt, truncated or foreign weights, a damaged log.csv, other data under a run, non-finite
or absurd flags. The helpers are test_faults.py's."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import safetensors.torch
import torch
from test_faults import TINY, ckpt, one_line, run

import ddim
from ddim.training.checkpoint import DamagedCheckpoint, list_checkpoints, load_checkpoint


# ---- damaged files ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """A tiny run of 3 steps, a checkpoint after each, a log line after each."""
    out = tmp_path_factory.mktemp("reference") / "run"
    argv = ["--steps", 3, "--checkpoint-every", 1, "--keep-last", 0, "--log-every", 1]
    assert run("train", *TINY, "--out", out, *argv) == 0
    return out


@pytest.fixture
def damaged(tmp_path, reference) -> Path:
    """A copy of the reference run, free to damage."""
    return shutil.copytree(reference, tmp_path / "run")


def _config(out: Path, edit) -> None:
    file = out / "checkpoints" / "step-000003" / "config.json"
    config = json.loads(file.read_text())
    edit(config)
    file.write_text(json.dumps(config))


def _state(out: Path, edit) -> None:
    file = out / "checkpoints" / "step-000003" / "state.pt"
    state = torch.load(file, weights_only=True)
    edit(state)
    torch.save(state, file)


CONFIG_EDITS = {
    "size ab": (lambda c: c["run"]["data"].update(size="ab"), "data.size must be of type"),
    "groups 0": (lambda c: c["run"]["model"].update(groups=0), "groups"),
    "num_classes x": (lambda c: c["run"]["model"].update(num_classes="x"), "model.num_classes must be"),
    "prediction deleted": (lambda c: c["run"]["diffusion"].pop("prediction"), "lacks the key(s) 'pred"),
    "step negative": (lambda c: c.update(step=-1), '"step": -1'),
}


@pytest.mark.parametrize("case", CONFIG_EDITS)
def test_a_damaged_config_json_is_one_line(damaged, case, capsys):
    edit, message = CONFIG_EDITS[case]
    _config(damaged, edit)
    assert run("sample", "--checkpoint", ckpt(damaged, 3), "--out", damaged / "g.png") == 2
    line = one_line(capsys.readouterr().err)
    assert message in line and "config.json" in line


STATE_EDITS = {
    "negative data position": (lambda s: s.update(data_position=-8), "data_position -8"),
    "no optimizer": (lambda s: s.pop("optimizer"), "no optimizer"),
    "rng of wrong type": (lambda s: s["rng"].update(torch=[1, 2]), "RNG states"),
    "optimizer of other shapes": (
        lambda s: s["optimizer"]["state"][0].update(exp_avg=torch.zeros(3)),
        "does not fit this run",
    ),
}


@pytest.mark.parametrize("case", STATE_EDITS)
def test_a_malformed_state_pt_is_skipped_with_a_line(damaged, case, capsys):
    """Resuming skips the malformed newest checkpoint for step 2, naming it, and ends exactly."""
    edit, message = STATE_EDITS[case]
    _state(damaged, edit)
    if case == "optimizer of other shapes":  # well-formed, so only applying it finds the misfit
        assert run("train", "--out", damaged, "--resume", "--steps", 4) == 2
        assert message in one_line(capsys.readouterr().err)
        return
    assert run("train", "--out", damaged, "--resume", "--steps", 4) == 0
    err = capsys.readouterr().err
    assert "skipped damaged step-000003" in err and message in err and "step-000002" in err
    assert (damaged / "checkpoints" / "step-000003.damaged" / "state.pt").is_file()  # kept aside


def test_damaged_weights_fall_back_for_sampling(damaged, capsys):
    file = damaged / "checkpoints" / "step-000003" / "ema.safetensors"
    file.write_bytes(file.read_bytes()[:-100])  # truncated
    with pytest.warns(DamagedCheckpoint, match="step-000003 .*ema.safetensors.*using .*step-000002"):
        assert load_checkpoint(damaged).step == 2
    with pytest.warns(DamagedCheckpoint, match="skipped damaged step-000003"):
        assert ddim.load(damaged, device="cpu").path == ckpt(damaged, 2)  # the library facade
    assert run("sample", "--checkpoint", ckpt(damaged, 3), "--out", damaged / "g.png") == 2
    assert "not a safetensors file" in one_line(capsys.readouterr().err)


def test_a_damaged_log_csv(damaged, capsys):
    log = damaged / "log.csv"
    lines = log.read_text().splitlines()
    log.write_text("\n".join([*lines[:3], lines[3][:9]]))  # a partial last line: a killed writer
    assert run("train", "--out", damaged, "--resume", "--steps", 4) == 0
    # the line of step 3 died with its writer (after checkpoint 3, which comes first); none other
    assert [line.split(",")[0] for line in log.read_text().splitlines()[1:]] == ["1", "2", "4"]
    log.write_text("\n".join([lines[0], "1,nan?,x", *lines[2:]]))
    assert run("train", "--out", damaged, "--resume", "--steps", 5) == 2
    assert "log.csv line 2 is damaged" in one_line(capsys.readouterr().err)


def test_resume_refuses_other_data(damaged, tmp_path, capsys):
    folder = tmp_path / "images"
    folder.mkdir()
    from PIL import Image

    for i in range(4):
        Image.new("L", (8, 8), color=i * 60).save(folder / f"{i}.png")
    _config(damaged, lambda c: c["run"]["data"].update(dataset=str(folder)))
    assert run("train", "--out", damaged, "--resume", "--steps", 4) == 2
    assert "is not what" in one_line(capsys.readouterr().err)


# ---- values ----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "flags, message",
    [
        (["--lr", "inf"], "--lr: must be a finite number > 0, got inf"),
        (["--lr", "nan"], "--lr: must be a finite number > 0"),
        (["--lr", "5"], "lr must lie in (0, 1]"),
        (["--offset-noise", "1e30"], "offset_noise must lie in [0, 1]"),
        (["--min-snr-gamma", "inf"], "--min-snr-gamma: must be a finite number > 0"),
        (["--seed", str(2**64)], "--seed: must be an integer in [0, 2**64)"),
        (["--device", "meta"], "device 'meta' cannot run"),
        (["--device", "cuda:7"], "cuda:7"),
    ],
)
def test_absurd_training_flags_are_one_line(tmp_path, flags, message, capsys):
    assert run("train", *TINY, "--out", tmp_path / "run", "--steps", 1, *flags) == 2
    assert message in one_line(capsys.readouterr().err)
    assert not list_checkpoints(tmp_path / "run" / "checkpoints")


@pytest.mark.parametrize("flags", [["--eta", "inf"], ["--guidance", "inf"], ["--clip", "inf"]])
def test_non_finite_sampling_flags_are_one_line(reference, tmp_path, flags, capsys):
    assert run("sample", "--checkpoint", reference, "--out", tmp_path / "g.png", *flags) == 2
    line = one_line(capsys.readouterr().err)
    assert f"{flags[0]}: must be " in line and "finite" in line


def test_safetensors_garbage_is_one_line(damaged, capsys):
    safetensors.torch.save_file({"x": torch.zeros(1)}, ckpt(damaged, 3) / "model.safetensors")
    (ckpt(damaged, 3) / "ema.safetensors").write_bytes(b"\x00" * 64)
    assert run("sample", "--checkpoint", ckpt(damaged, 3), "--out", damaged / "g.png") == 2
    assert "ema.safetensors is not a safetensors file" in one_line(capsys.readouterr().err)
