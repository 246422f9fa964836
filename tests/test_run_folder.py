"""`remove_run` (what `ddim demo` uses to clear its old run) deletes only what ddim wrote: every
entry, inside the checkpoints, samples and tensorboard folders too, is checked before anything
is deleted."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from ddim.errors import BadFile
from ddim.training.run_folder import remove_run

CHECKPOINT_FILES = ("config.json", "model.safetensors", "ema.safetensors", "state.pt")


def ddim_run(folder: Path) -> Path:
    """A run folder holding one of each thing ddim writes (file contents do not matter here)."""
    (folder / "ddim-run.json").parent.mkdir(parents=True)
    (folder / "ddim-run.json").write_text('{"format": "ddim-run", "version": 1}')
    for name in ("log.csv", "tuned-grids.json"):
        (folder / name).write_text("ddim's")
    for step in ("step-000001", "step-000002.damaged", ".tmp-step-000003", "step-1000000"):
        (folder / "checkpoints" / step).mkdir(parents=True)
        for name in CHECKPOINT_FILES[: 1 if "tmp" in step else 4]:
            (folder / "checkpoints" / step / name).write_text("ddim's")
    (folder / "samples").mkdir()
    (folder / "samples" / "step-000001.png").write_text("ddim's")
    (folder / "tensorboard").mkdir()
    (folder / "tensorboard" / "events.out.tfevents.1732960000.host.123.0").write_text("ddim's")
    return folder


def everything(folder: Path) -> set[Path]:
    return set(folder.rglob("*"))


def test_a_run_of_ddim_files_only_is_removed(tmp_path, trained_run):
    remove_run(ddim_run(tmp_path / "made"))
    assert not (tmp_path / "made").exists()
    shutil.copytree(trained_run, tmp_path / "trained")  # a run as `ddim train` really writes it
    remove_run(tmp_path / "trained")
    assert not (tmp_path / "trained").exists()


@pytest.mark.parametrize(
    "yours, named",
    [
        ("checkpoints/notes.txt", "checkpoints/notes.txt"),
        ("checkpoints/step-000001/my-notes.txt", "checkpoints/step-000001/my-notes.txt"),
        ("checkpoints/step-000002.damaged/keep.pt", "checkpoints/step-000002.damaged/keep.pt"),
        ("checkpoints/best/model.safetensors", "checkpoints/best"),
        ("samples/favourite.png", "samples/favourite.png"),
        ("samples/step-000001.jpg", "samples/step-000001.jpg"),
        ("tensorboard/mine/events.out.tfevents.1", "tensorboard/mine"),
        ("notes.md", "notes.md"),
    ],
)
def test_a_file_of_yours_anywhere_is_refused_before_anything_is_deleted(tmp_path, yours, named):
    run = ddim_run(tmp_path / "run")
    (run / yours).parent.mkdir(parents=True, exist_ok=True)
    (run / yours).write_text("mine")
    before = everything(run)
    with pytest.raises(BadFile, match=f"holds {named}, which ddim did not write") as refused:
        remove_run(run)
    assert "\n" not in str(refused.value)
    assert everything(run) == before  # nothing deleted


def test_a_link_inside_is_refused_and_its_target_kept(tmp_path):
    run = ddim_run(tmp_path / "run")
    target = tmp_path / "precious.png"
    target.write_text("mine")
    (run / "samples" / "step-000009.png").symlink_to(target)
    with pytest.raises(BadFile, match="samples/step-000009.png"):
        remove_run(run)
    assert target.read_text() == "mine" and (run / "checkpoints" / "step-000001").is_dir()
