"""Tests of ddim.training.checkpoint: loading, atomic saving under a crash, and every refusal."""

import json
import shutil

import pytest
import safetensors.torch
import torch
from safetensors.torch import load_file
from test_training import tiny_run

from ddim import sample
from ddim.config import DiffusionConfig
from ddim.data import load_dataset
from ddim.training import CheckpointError, load_checkpoint, train
from ddim.training.checkpoint import (
    DamagedCheckpoint,
    damage,
    list_checkpoints,
    read_config,
    read_state,
    save_checkpoint,
)

EXECUTED = []


def _mark() -> dict:
    EXECUTED.append("code from a checkpoint ran")
    return {}


class Payload:
    """Unpickling this runs `_mark`: what a malicious pickle in place of weights would do."""

    def __reduce__(self):
        return (_mark, ())


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits", size=8)


@pytest.fixture(scope="module")
def run_dir(trained_run):
    return trained_run  # conftest's one tiny run of the session: checkpoints after steps 1 and 2


@pytest.fixture(scope="module")
def RUN(run_dir):  # the config it was trained with
    return load_checkpoint(run_dir).config


@pytest.fixture
def checkpoint(run_dir, tmp_path):
    """A copy of the newest checkpoint, free to damage."""
    return shutil.copytree(run_dir / "checkpoints" / "step-000002", tmp_path / "step-000002")


def test_load_checkpoint_from_a_run_or_one_checkpoint(run_dir, RUN):
    loaded = load_checkpoint(run_dir)
    assert loaded.step == 2 and loaded.path == run_dir / "checkpoints" / "step-000002"
    assert (loaded.config.train.steps, loaded.config.train.checkpoint_every) == (2, 1)
    assert loaded.prediction == DiffusionConfig().prediction == "v"  # the default
    assert loaded.self_condition is False and loaded.num_classes is None
    assert not loaded.model.training and not any(p.requires_grad for p in loaded.model.parameters())
    torch.testing.assert_close(loaded.schedule.alphas_cumprod, RUN.diffusion.make_schedule().alphas_cumprod)
    assert load_checkpoint(run_dir / "checkpoints").step == 2
    assert load_checkpoint(run_dir / "checkpoints" / "step-000001").step == 1
    ema, raw = load_checkpoint(run_dir).model, load_checkpoint(run_dir, use_ema=False).model
    assert any(not torch.equal(a, b) for a, b in zip(ema.state_dict().values(), raw.state_dict().values()))
    x = sample(loaded.model, torch.randn(2, 1, 8, 8), loaded.schedule, steps=3, prediction=loaded.prediction)
    assert x.shape == (2, 1, 8, 8) and torch.isfinite(x).all()


def test_a_crash_while_saving_leaves_the_last_checkpoint_whole(tmp_path, digits, run_dir, RUN, monkeypatch):
    real_save, calls = safetensors.torch.save_file, []

    def save_then_crash(*args, **kwargs):
        calls.append(args[1])
        if len(calls) >= 3:  # the second checkpoint after its first file, and the rescue's retry
            raise RuntimeError("disk full")
        return real_save(*args, **kwargs)

    monkeypatch.setattr(safetensors.torch, "save_file", save_then_crash)
    with pytest.raises(RuntimeError, match="disk full") as caught:
        train(RUN, tmp_path, progress=False, dataset=digits)
    assert "could not save step 2" in caught.value.__notes__[0]
    monkeypatch.undo()
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == ["step-000001"]  # no partial folder
    assert load_checkpoint(tmp_path).step == 1
    # resuming from it reaches the weights of the run that never crashed
    end = train(RUN, tmp_path, resume=True, progress=False, dataset=digits)
    want = load_file(run_dir / "checkpoints" / "step-000002" / "model.safetensors")
    got = load_file(end / "model.safetensors")
    for key in want:
        torch.testing.assert_close(got[key], want[key], rtol=0, atol=1e-6)


def test_a_crash_while_deleting_an_old_checkpoint_leaves_no_partial_one(
    tmp_path, digits, run_dir, RUN, monkeypatch
):
    """keep_last deletes the oldest checkpoint; a kill midway (here: rmtree stops after one file)
    leaves only a hidden .tmp- folder, never a step-XXXXXX folder missing files, and a resume
    clears it, even with no step left to train."""
    out = shutil.copytree(run_dir, tmp_path / "run")
    root, newest = out / "checkpoints", out / "checkpoints" / "step-000002"
    states = [load_file(newest / name) for name in ("model.safetensors", "ema.safetensors")]
    train_state = torch.load(newest / "state.pt", weights_only=True)

    def killed_midway(folder, *args, **kwargs):
        next(folder.iterdir()).unlink()
        raise KeyboardInterrupt

    monkeypatch.setattr(shutil, "rmtree", killed_midway)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(root, 3, RUN, *states, {**train_state, "step": 3}, keep_last=2)
    monkeypatch.undo()
    assert [p.name for p in list_checkpoints(root)] == ["step-000002", "step-000003"]
    assert [damage(p) for p in list_checkpoints(root)] == [None, None]
    assert [p.name for p in root.glob(".tmp-*")] == [".tmp-step-000001"]
    assert train(RUN, out, resume=True, progress=False, dataset=digits) == root / "step-000003"
    assert sorted(p.name for p in root.iterdir()) == ["step-000002", "step-000003"]


def _edit_config(checkpoint, edit) -> None:
    config = json.loads((checkpoint / "config.json").read_text())
    edit(config)
    (checkpoint / "config.json").write_text(json.dumps(config))


def test_refuses_weights_of_another_shape(checkpoint):
    _edit_config(checkpoint, lambda c: c["run"]["model"].update(base_channels=16))
    with pytest.raises(CheckpointError, match=r"ema\.safetensors: '.*' has shape .* but the model expects"):
        load_checkpoint(checkpoint)


def test_refuses_extra_or_missing_keys(checkpoint):
    weights = load_file(checkpoint / "ema.safetensors")
    safetensors.torch.save_file({**weights, "extra.weight": torch.zeros(1)}, checkpoint / "ema.safetensors")
    with pytest.raises(CheckpointError, match="unexpected key 'extra.weight'"):
        load_checkpoint(checkpoint)
    key = sorted(weights)[0]
    del weights[key]
    safetensors.torch.save_file(weights, checkpoint / "ema.safetensors")
    with pytest.raises(CheckpointError, match=f"lacks '{key}'"):
        load_checkpoint(checkpoint)


@pytest.mark.parametrize("name", ["ema.safetensors", "config.json"])
def test_refuses_a_missing_file_and_names_it(checkpoint, name):
    (checkpoint / name).unlink()
    with pytest.raises(CheckpointError, match=f"{name} is missing"):
        load_checkpoint(checkpoint)


def test_refuses_to_unpickle_anything(checkpoint):
    torch.save(Payload(), checkpoint / "ema.safetensors")
    with pytest.raises(CheckpointError, match="not a safetensors file.*refusing to unpickle"):
        load_checkpoint(checkpoint)
    torch.save(Payload(), checkpoint / "state.pt")
    with pytest.raises(
        CheckpointError, match="state.pt holds objects other than tensors.*refusing to unpickle"
    ):
        read_state(checkpoint, 2)
    assert EXECUTED == []


def test_refuses_what_is_not_a_ddim_checkpoint(tmp_path, checkpoint):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="not a ddim checkpoint"):
        load_checkpoint(tmp_path / "empty")
    _edit_config(checkpoint, lambda c: c.update(version=3))
    with pytest.raises(CheckpointError, match="version 3, but this ddim reads versions 1 to 2"):
        load_checkpoint(checkpoint)
    _edit_config(checkpoint, lambda c: c.update(format="diffusers"))
    with pytest.raises(CheckpointError, match="not a ddim checkpoint config"):
        load_checkpoint(checkpoint)
    (checkpoint / "config.json").write_text("{")
    with pytest.raises(CheckpointError, match="config.json"):
        load_checkpoint(checkpoint)


def test_resume_falls_back_from_a_checkpoint_without_its_state(tmp_path, run_dir, RUN, digits):
    shutil.copytree(run_dir / "checkpoints", tmp_path / "checkpoints")
    (tmp_path / "checkpoints" / "step-000002" / "state.pt").unlink()
    skipped = "skipped damaged step-000002 .*state.pt is missing.*step-000001"
    with pytest.warns(DamagedCheckpoint, match=skipped):
        end = train(RUN, tmp_path, resume=True, progress=False, dataset=digits)
    # step 2 was trained again from step 1, exactly; the damaged folder was kept aside, not deleted
    want = load_file(run_dir / "checkpoints" / "step-000002" / "model.safetensors")
    got = load_file(end / "model.safetensors")
    assert all(torch.equal(got[k], want[k]) for k in want)
    assert (tmp_path / "checkpoints" / "step-000002.damaged" / "model.safetensors").is_file()
    (tmp_path / "checkpoints" / "step-000001" / "state.pt").unlink()
    (end / "state.pt").unlink()
    with pytest.raises(CheckpointError, match="every checkpoint under .* is damaged"):
        train(tiny_run(steps=3), tmp_path, resume=True, progress=False, dataset=digits)


def test_only_a_format_upgrade_fills_missing_keys(checkpoint, monkeypatch):
    """A config.json of the current version lacking a key is refused; one of an older version
    gets that key's default, explicitly (simulated by making this ddim read version 3)."""
    _edit_config(checkpoint, lambda c: c["run"]["diffusion"].pop("prediction"))
    with pytest.raises(CheckpointError, match="lacks the key.*'prediction'"):
        load_checkpoint(checkpoint)
    monkeypatch.setattr("ddim.training.checkpoint.VERSION", 3)
    assert load_checkpoint(checkpoint).prediction == DiffusionConfig().prediction


@pytest.mark.parametrize("old, new", [(True, "tf"), (False, "none")])
def test_a_version_1_config_keeps_its_ema_profile(checkpoint, old, new):
    """Version 1 stored ema_warmup as a bool (TensorFlow's warm-up or none); read as that profile,
    not as version 2's default, so that a resumed run averages as it began."""

    def to_version_1(c):
        c.update(version=1)
        c["run"]["train"]["ema_warmup"] = old

    _edit_config(checkpoint, to_version_1)
    run, _ = read_config(checkpoint)
    assert run.train.ema_warmup == new
