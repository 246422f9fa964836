"""Checkpoints on disk: atomic saving, finding the newest, and loading with clear refusals.

A checkpoint is one folder `<run>/checkpoints/step-XXXXXX/` holding
    model.safetensors   the trained weights          ema.safetensors   their moving average
    config.json         {"format": "ddim-checkpoint", "version": 1, "step": ..., "run": RunConfig.to_dict()}
    state.pt            what resuming needs: optimizer state, step, data position, RNG states
It is written into a hidden sibling folder, flushed to disk and renamed into place, so a crash
while saving leaves the previous checkpoints whole; an old one is deleted (`keep_last`) only after
being renamed to a hidden folder, so a crash while deleting leaves no partial step-XXXXXX (the
hidden leftovers are cleared when the run resumes).
Loading never runs code from a file: weights are read with safetensors and state.pt with
`torch.load(weights_only=True)`. The noise schedule is rebuilt from the saved DiffusionConfig,
never read from the weights.

A damaged newest checkpoint does not block a run: `find_checkpoint` on a run folder falls back to
the newest intact one and warns (`DamagedCheckpoint`, one line) naming what it skipped; a new
checkpoint of a skipped step moves the damaged folder aside to `step-XXXXXX.damaged`, never
deleting it. Intact means: config.json valid, the safetensors headers cover their files (no
checksum: flipped bits inside the data are not seen), state.pt readable and well-formed.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import re
import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import safetensors
import safetensors.torch
import torch
from torch import Tensor, nn

from ddim.config import RunConfig
from ddim.errors import BadFile, BadValue
from ddim.models import UNet
from ddim.schedule import NoiseSchedule

FORMAT, VERSION = "ddim-checkpoint", 2  # 2: train.ema_warmup names a profile (was a bool)
MODEL, EMA, CONFIG, STATE = "model.safetensors", "ema.safetensors", "config.json", "state.pt"
CHECKPOINTS = "checkpoints"
_STEP_DIR = re.compile(r"step-(\d+)")


class CheckpointError(BadFile):
    """A checkpoint that cannot be loaded; the message names the file and what to do."""


class DamagedCheckpoint(UserWarning):
    """A damaged checkpoint was skipped for an older intact one; the message names both."""


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


def _save_tensors(state: dict[str, Tensor], file: Path) -> None:
    """safetensors.torch.save_file, its I/O errors (disk full, ...) raised as OSError with errno."""
    try:
        safetensors.torch.save_file(_tensors(state), file, metadata={"format": "pt"})
    except safetensors.SafetensorError as e:
        code = re.search(r"os error (\d+)", str(e))
        if code is None:
            raise
        raise OSError(int(code.group(1)), os.strerror(int(code.group(1))), str(file)) from e


def clear_partial(root: Path) -> None:
    """Remove the hidden .tmp-step-* folders that a killed process left half written or half
    deleted under a checkpoints folder `root`."""
    for leftover in root.glob(".tmp-step-*"):
        shutil.rmtree(leftover, ignore_errors=True)


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
    clear_partial(root)
    if final.exists():  # a damaged checkpoint skipped on resume: keep it aside, never delete it
        os.rename(final, root / f"{final.name}.damaged")
    tmp = root / f".tmp-{final.name}"
    tmp.mkdir()
    try:
        _save_tensors(model_state, tmp / MODEL)
        _save_tensors(ema_state, tmp / EMA)
        config = {"format": FORMAT, "version": VERSION, "step": step, "run": run.to_dict()}
        (tmp / CONFIG).write_text(json.dumps(config, indent=2) + "\n")
        buffer = io.BytesIO()  # serialised first, so that a failed write is an OSError with its errno
        torch.save(train_state, buffer)
        (tmp / STATE).write_bytes(buffer.getvalue())
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
            _remove(old)
    return final


def _remove(checkpoint: Path) -> None:
    """Delete a checkpoint folder so that a crash midway never leaves a partial step-XXXXXX
    folder: it is renamed to a hidden .tmp- name first (atomic), which `clear_partial` removes."""
    hidden = checkpoint.with_name(f".tmp-{checkpoint.name}")
    os.rename(checkpoint, hidden)
    _fsync(checkpoint.parent)
    shutil.rmtree(hidden)


# ---- loading --------------------------------------------------------------------------------
ALL_FILES = (CONFIG, MODEL, EMA, STATE)  # what resuming needs


def find_checkpoint(path: str | os.PathLike, needs: tuple[str, ...] = (CONFIG, EMA)) -> Path:
    """The checkpoint folder that `path` names: itself, or the newest intact one (whose files
    `needs` are whole) under `path/checkpoints/` (a run folder) or directly under `path` (a
    checkpoints folder); damaged newer ones are skipped with a `DamagedCheckpoint` warning."""
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
        skipped = []
        for checkpoint in reversed(found):
            problem = damage(checkpoint, needs)
            if problem is None:
                if skipped:
                    warnings.warn(
                        f"skipped damaged {'; '.join(skipped)}; using {checkpoint}", DamagedCheckpoint, 2
                    )
                return checkpoint
            skipped.append(f"{checkpoint.name} ({problem})")
        if found:
            raise CheckpointError(
                f"every checkpoint under {root} is damaged (newest: {skipped[0]}); train a new run"
            )
    raise CheckpointError(
        f"{path} is not a ddim checkpoint: it holds no {CONFIG} and no {CHECKPOINTS}/step-XXXXXX "
        "folders; pass the folder a training run wrote, or one of its checkpoints/step-XXXXXX folders"
    )


def damage(checkpoint: Path, needs: tuple[str, ...] = ALL_FILES) -> str | None:
    """What is wrong with the files `needs` of a checkpoint folder, in a few words, or None."""
    try:
        _, step = read_config(checkpoint)
        for name in (MODEL, EMA):
            if name in needs:
                file = checkpoint / name
                if not file.is_file():
                    return f"{name} is missing"
                with safetensors.safe_open(file, "pt"):  # checks that the header covers the file
                    pass
        if STATE in needs:
            read_state(checkpoint, step)
    except CheckpointError as e:
        return str(e).split(";")[0]
    except (safetensors.SafetensorError, OSError) as e:
        return f"{name}: {e}"
    return None


def _upgrade(run: Any, version: int) -> Any:
    """A version-1 run config in version 2's terms: ema_warmup true/false was TensorFlow's profile
    or none (a key that an older file lacks takes its default in `RunConfig.from_dict`)."""
    train = run.get("train") if isinstance(run, dict) else None
    if version == 1 and isinstance(train, dict) and isinstance(train.get("ema_warmup"), bool):
        run = {**run, "train": {**train, "ema_warmup": "tf" if train["ema_warmup"] else "none"}}
    return run


def read_config(checkpoint: str | os.PathLike) -> tuple[RunConfig, int]:
    """(run config, step) from a checkpoint folder's config.json, validated. A missing key is an
    error; only a file of an older format version gets the defaults of the keys it lacks."""
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
    version = data.get("version")
    if type(version) is not int or not 1 <= version <= VERSION:
        raise CheckpointError(
            f"{file} has format version {version!r}, but this ddim reads versions 1 to {VERSION}; "
            "upgrade ddim, or restore the file"
        )
    step = data.get("step")
    if type(step) is not int or step < 0:
        raise CheckpointError(f'{file} has "step": {step!r}, not an integer >= 0; restore the file')
    try:
        return RunConfig.from_dict(_upgrade(data.get("run"), version), fill_defaults=version < VERSION), step
    except BadValue as e:
        raise CheckpointError(f"{file} holds an invalid run config ({e}); restore the file") from e


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


def read_state(checkpoint: str | os.PathLike, step: int) -> dict:
    """The training state (state.pt) of the checkpoint of `step`, unpickling plain data only,
    with its fields checked."""
    file = Path(checkpoint) / STATE
    if not file.is_file():
        raise CheckpointError(
            f"{file} is missing; it holds the optimizer and RNG states that resuming needs: "
            "resume from another checkpoint or start a new run"
        )
    try:
        state = torch.load(file, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:  # weights_only met an object other than plain data
        raise CheckpointError(
            f"{file} holds objects other than tensors and plain values; refusing to unpickle them, "
            "since a pickle can run code. Resume from another checkpoint"
        ) from e
    except Exception as e:  # a truncated or damaged file fails in several ways
        raise CheckpointError(
            f"cannot read {file} ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); "
            "it is damaged, resume from another checkpoint"
        ) from e
    return _check_state(state, file, step)


def _bytes(value: object) -> bool:
    return isinstance(value, Tensor) and value.dtype == torch.uint8 and value.dim() == 1


def _check_state(state: object, file: Path, step: int) -> dict:
    """`state` (read from `file`, of the checkpoint of `step`) after checking its fields."""

    def refuse(problem: str) -> CheckpointError:
        return CheckpointError(f"{file} is malformed ({problem}); resume from another checkpoint")

    if not isinstance(state, dict):
        raise refuse(f"a {type(state).__name__} instead of a dict")
    missing = sorted({"step", "data_position", "optimizer", "rng"} - set(state))
    if missing:
        raise refuse(f"no {', '.join(missing)}")
    if type(state["step"]) is not int or state["step"] != step:
        raise refuse(f"step {state['step']!r} where its config.json says {step}")
    position = state["data_position"]
    if type(position) is not int or position < 0:
        raise refuse(f"data_position {position!r}, not an integer >= 0")
    optimizer = state["optimizer"]
    if not (
        isinstance(optimizer, dict)
        and isinstance(optimizer.get("state"), dict)
        and isinstance(optimizer.get("param_groups"), list)
    ):
        raise refuse("an optimizer state without its 'state' and 'param_groups'")
    rng = state["rng"]
    if not (isinstance(rng, dict) and all(_bytes(rng.get(k)) for k in ("torch", "data", "noise"))):
        raise refuse("RNG states that are not byte tensors")
    if not (isinstance(rng.get("cuda"), list) and all(_bytes(s) for s in rng["cuda"])):
        raise refuse("CUDA RNG states that are not a list of byte tensors")
    data = state.get("data")
    if data is not None and not (isinstance(data, dict) and {"count", "shape", "sha256"} <= set(data)):
        raise refuse("a data fingerprint without count, shape and sha256")
    return state


def load_checkpoint(
    path: str | os.PathLike, *, use_ema: bool = True, device: str | torch.device = "cpu"
) -> LoadedCheckpoint:
    """The model (EMA weights unless use_ema=False) and schedule of a checkpoint; `path` is a run
    folder (its newest checkpoint is used) or one checkpoint folder."""
    checkpoint = find_checkpoint(path, (CONFIG, EMA if use_ema else MODEL))
    run, step = read_config(checkpoint)
    model = UNet(run.model)
    load_weights(checkpoint / (EMA if use_ema else MODEL), model)
    model = model.to(device).eval().requires_grad_(False)
    return LoadedCheckpoint(model, run.diffusion.make_schedule(), run, step, checkpoint)
