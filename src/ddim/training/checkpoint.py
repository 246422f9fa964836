"""Checkpoints on disk: atomic saving, finding the newest, and loading with clear refusals.

A checkpoint is one folder `<run>/checkpoints/step-XXXXXX/` holding
    model.safetensors   the trained weights          ema.safetensors   their moving average
    config.json         {"format": "ddim-checkpoint", "version": 1, "step": ..., "run": RunConfig.to_dict()}
    state.pt            what resuming needs: optimizer state, step, data position, RNG states
It is written into a hidden sibling folder, flushed to disk and renamed into place, so a crash
while saving leaves the previous checkpoints whole. Loading never runs code from a file:
weights are read with safetensors and state.pt with `torch.load(weights_only=True)`. The noise
schedule is rebuilt from the saved DiffusionConfig, never read from the weights.
"""

from __future__ import annotations

import json
import os
import pickle
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import safetensors
import safetensors.torch
import torch
from torch import Tensor, nn

from ddim.config import RunConfig
from ddim.errors import BadFile
from ddim.models import UNet
from ddim.schedule import NoiseSchedule

FORMAT, VERSION = "ddim-checkpoint", 1
MODEL, EMA, CONFIG, STATE = "model.safetensors", "ema.safetensors", "config.json", "state.pt"
CHECKPOINTS = "checkpoints"
_STEP_DIR = re.compile(r"step-(\d+)")


class CheckpointError(BadFile):
    """A checkpoint that cannot be loaded; the message names the file and what to do."""


@dataclass
class LoadedCheckpoint:
    model: nn.Module  # in eval mode, on the requested device
    schedule: NoiseSchedule
    config: RunConfig
    step: int
    path: Path  # the checkpoint folder it came from

    @property
    def prediction(self) -> str:
        return self.config.diffusion.prediction

    @property
    def self_condition(self) -> bool:
        return self.config.model.self_condition

    @property
    def num_classes(self) -> int | None:
        return self.config.model.num_classes

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of the images the model was trained on."""
        return self.config.image_shape()


def step_dir_name(step: int) -> str:
    return f"step-{step:06d}"


def list_checkpoints(root: str | os.PathLike) -> list[Path]:
    """The step-XXXXXX folders directly under `root`, oldest first (empty if there are none)."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and _STEP_DIR.fullmatch(p.name)]
    return sorted(found, key=lambda p: int(_STEP_DIR.fullmatch(p.name).group(1)))


# ---- saving ---------------------------------------------------------------------------------
def _fsync(path: Path) -> None:
    """Flush a file, or a folder's entries, to disk (folders only where the OS can open them)."""
    if path.is_dir() and not hasattr(os, "O_DIRECTORY"):
        return
    fd = os.open(path, os.O_RDONLY | (os.O_DIRECTORY if path.is_dir() else 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _tensors(state: dict[str, Tensor]) -> dict[str, Tensor]:
    return {k: v.detach().to("cpu").contiguous() for k, v in state.items()}


def save_checkpoint(
    root: str | os.PathLike,
    step: int,
    run: RunConfig,
    model_state: dict[str, Tensor],
    ema_state: dict[str, Tensor],
    train_state: dict,
    keep_last: int = 0,
) -> Path:
    """Write `root/step-XXXXXX/` atomically and return it; then keep only the newest `keep_last`
    checkpoints (0: all). On any error the partial folder is removed and the error re-raised."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    final = root / step_dir_name(step)
    for leftover in root.glob(".tmp-step-*"):  # partial folders of a killed process
        shutil.rmtree(leftover, ignore_errors=True)
    tmp = root / f".tmp-{final.name}"
    tmp.mkdir()
    try:
        meta = {"format": "pt"}
        safetensors.torch.save_file(_tensors(model_state), tmp / MODEL, metadata=meta)
        safetensors.torch.save_file(_tensors(ema_state), tmp / EMA, metadata=meta)
        config = {"format": FORMAT, "version": VERSION, "step": step, "run": run.to_dict()}
        (tmp / CONFIG).write_text(json.dumps(config, indent=2) + "\n")
        torch.save(train_state, tmp / STATE)
        for name in (MODEL, EMA, CONFIG, STATE):
            _fsync(tmp / name)
        _fsync(tmp)
        os.rename(tmp, final)  # atomic on POSIX; fails if `final` already exists
        _fsync(root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if keep_last > 0:
        for old in list_checkpoints(root)[:-keep_last]:
            shutil.rmtree(old)
    return final


# ---- loading --------------------------------------------------------------------------------
def find_checkpoint(path: str | os.PathLike) -> Path:
    """The checkpoint folder that `path` names: itself, or the newest under `path/checkpoints/`
    (a run folder) or directly under `path` (a checkpoints folder)."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path} does not exist; pass a run folder or one of its checkpoint folders")
    if (path / CONFIG).is_file():
        return path
    if any((path / name).exists() for name in (MODEL, EMA, STATE)):
        raise CheckpointError(
            f"{path / CONFIG} is missing: a checkpoint needs it to rebuild the model; copy the whole "
            "checkpoint folder, or use another checkpoint of the run"
        )
    for root in (path / CHECKPOINTS, path):
        found = list_checkpoints(root)
        if found:
            return found[-1]
    raise CheckpointError(
        f"{path} is not a ddim checkpoint: it holds no {CONFIG} and no {CHECKPOINTS}/step-XXXXXX "
        "folders; pass the folder a training run wrote, or one of its checkpoints/step-XXXXXX folders"
    )


def read_config(checkpoint: str | os.PathLike) -> tuple[RunConfig, int]:
    """(run config, step) from a checkpoint folder's config.json, validated."""
    file = Path(checkpoint) / CONFIG
    if not file.is_file():
        raise CheckpointError(f"{file} is missing; pass a complete checkpoint folder")
    try:
        data = json.loads(file.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"cannot read {file} ({e}); the file is damaged, use another checkpoint") from e
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise CheckpointError(
            f'{file} is not a ddim checkpoint config (no "format": "{FORMAT}"); pass a folder '
            "written by ddim's training"
        )
    if not isinstance(data.get("version"), int) or data["version"] > VERSION:
        raise CheckpointError(
            f"{file} has format version {data.get('version')!r}, newer than this ddim reads "
            f"({VERSION}); upgrade ddim"
        )
    try:
        return RunConfig.from_dict(data["run"]), int(data["step"])
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{file} holds an invalid run config ({e}); use another checkpoint") from e


def load_weights(file: str | os.PathLike, model: nn.Module) -> None:
    """Load a safetensors file into `model`, refusing anything that is not safetensors or whose
    keys or shapes differ from the model's."""
    file = Path(file)
    if not file.is_file():
        raise CheckpointError(
            f"{file} is missing; copy the whole checkpoint folder, or use another checkpoint"
        )
    try:
        weights = safetensors.torch.load_file(file, device="cpu")
    except (safetensors.SafetensorError, OSError) as e:
        raise CheckpointError(
            f"{file} is not a safetensors file ({e}); refusing to unpickle it, since a pickle can run "
            "code. Convert trusted weights with safetensors.torch.save_file(state_dict, path)"
        ) from e
    expected = model.state_dict()
    fix = "the weights do not belong to the model that config.json describes; use the matching config"
    missing = sorted(set(expected) - set(weights))
    if missing:
        raise CheckpointError(f"{file} lacks {missing[0]!r} ({len(missing)} key(s) missing): {fix}")
    unexpected = sorted(set(weights) - set(expected))
    if unexpected:
        raise CheckpointError(
            f"{file} has unexpected key {unexpected[0]!r} ({len(unexpected)} in all): {fix}"
        )
    for key, value in expected.items():
        if weights[key].shape != value.shape:
            raise CheckpointError(
                f"{file}: {key!r} has shape {tuple(weights[key].shape)} but the model expects "
                f"{tuple(value.shape)}: {fix}"
            )
    model.load_state_dict(weights)


def read_state(checkpoint: str | os.PathLike) -> dict:
    """The training state (state.pt) of a checkpoint folder, unpickling plain data only."""
    file = Path(checkpoint) / STATE
    if not file.is_file():
        raise CheckpointError(
            f"{file} is missing; it holds the optimizer and RNG states that resuming needs: "
            "resume from another checkpoint or start a new run"
        )
    try:
        return torch.load(file, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:  # weights_only met an object other than plain data
        raise CheckpointError(
            f"{file} holds objects other than tensors and plain values; refusing to unpickle them, "
            "since a pickle can run code. Resume from another checkpoint"
        ) from e
    except Exception as e:  # a truncated or damaged file fails in several ways
        raise CheckpointError(
            f"cannot read {file} ({type(e).__name__}: {e}); it is damaged, resume from another checkpoint"
        ) from e


def load_checkpoint(
    path: str | os.PathLike, *, use_ema: bool = True, device: str | torch.device = "cpu"
) -> LoadedCheckpoint:
    """The model (EMA weights unless use_ema=False) and schedule of a checkpoint; `path` is a run
    folder (its newest checkpoint is used) or one checkpoint folder."""
    checkpoint = find_checkpoint(path)
    run, step = read_config(checkpoint)
    model = UNet(run.model)
    load_weights(checkpoint / (EMA if use_ema else MODEL), model)
    model = model.to(device).eval().requires_grad_(False)
    return LoadedCheckpoint(model, run.diffusion.make_schedule(), run, step, checkpoint)
