"""diffusers checkpoints as models for ddim's samplers: a `UNet2DModel` folder (config.json and
safetensors weights, as `save_pretrained` writes it, e.g. google/ddpm-cifar10-32) and its
scheduler config, read as a model callable, a NoiseSchedule and a prediction target.

Either layout is recognised: a pipeline folder (`unet/` and `scheduler/scheduler_config.json`)
or a bare UNet folder (with `scheduler_config.json` beside it, else diffusers' defaults). Weights
are read from safetensors only, so loading runs no code from the files. diffusers itself is an
optional dependency (`pip install "ddim[diffusers]"`), imported only here.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from ddim.errors import BadValue, MissingFile
from ddim.schedule import NoiseSchedule

PREDICTION_TYPES = {"epsilon": "eps", "v_prediction": "v", "sample": "x0"}
DIFFUSERS_EXTRA = 'pip install "ddim[diffusers]"'


def _unet_dir(path: Path) -> Path:
    return path / "unet" if (path / "unet" / "config.json").is_file() else path


def diffusers_unet_config(path: str | Path) -> dict:
    """The UNet's config.json under `path` ({} when there is none or it does not parse)."""
    config = _unet_dir(Path(path)) / "config.json"
    try:
        data = json.loads(config.read_text()) if config.is_file() else {}
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def is_diffusers_folder(path: str | Path) -> bool:
    return diffusers_unet_config(path).get("_class_name") == "UNet2DModel"


def schedule_from_config(config: dict) -> tuple[NoiseSchedule, str]:
    """(schedule, prediction) from a diffusers scheduler config (DDPM/DDIM/... share these keys)."""
    T = config.get("num_train_timesteps", 1000)
    kind = config.get("beta_schedule", "linear")
    start, end = config.get("beta_start", 0.0001), config.get("beta_end", 0.02)
    if config.get("trained_betas") is not None:
        schedule = NoiseSchedule(torch.tensor(config["trained_betas"], dtype=torch.float64))
    elif kind == "linear":
        schedule = NoiseSchedule.linear(T, start, end)
    elif kind == "scaled_linear":
        schedule = NoiseSchedule.scaled_linear(T, start, end)
    elif kind == "squaredcos_cap_v2":  # Nichol & Dhariwal's cosine, capped at 0.999
        schedule = NoiseSchedule.cosine(T)
    else:
        raise BadValue(
            f"diffusers beta_schedule {kind!r} is not supported; supported: linear, scaled_linear, "
            "squaredcos_cap_v2, or trained_betas"
        )
    if config.get("rescale_betas_zero_snr"):
        schedule = schedule.rescale_zero_terminal_snr()
    kind = config.get("prediction_type", "epsilon")
    if kind not in PREDICTION_TYPES:
        raise BadValue(
            f"diffusers prediction_type {kind!r} is not supported; use one of {list(PREDICTION_TYPES)}"
        )
    return schedule, PREDICTION_TYPES[kind]


class DiffusersUNet(nn.Module):
    """`model(x_t, t) -> output` around a diffusers UNet2DModel."""

    def __init__(self, unet: nn.Module):
        super().__init__()
        self.unet = unet

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        return self.unet(x, t).sample


@dataclass
class DiffusersCheckpoint:
    model: DiffusersUNet  # eval mode, on the requested device
    schedule: NoiseSchedule
    prediction: str
    image_shape: tuple[int, int, int]  # (C, H, W)
    path: Path
    weight_files: tuple[Path, ...]  # the safetensors files the weights came from
    clip: float | None = 1.0  # images in [-1, 1]: the scheduler's clip_sample_range, None without clip_sample
    self_condition: bool = False  # what ddim's own checkpoints also say, for the CLI
    num_classes: int | None = None


def load_diffusers(path: str | Path, device: str | torch.device = "cpu") -> DiffusersCheckpoint:
    """The UNet2DModel in `path` with its schedule; needs the diffusers package."""
    path = Path(path)
    try:
        from diffusers import UNet2DModel
    except ImportError as e:
        raise BadValue(
            f"{path} is a diffusers checkpoint; loading it needs diffusers: {DIFFUSERS_EXTRA}"
        ) from e
    unet_dir = _unet_dir(path)
    if not any(unet_dir.glob("*.safetensors")):
        raise MissingFile(
            f"{unet_dir} has no .safetensors weights; ddim does not unpickle .bin files, since a pickle "
            "can run code. Convert trusted weights with "
            "`UNet2DModel.from_pretrained(...).save_pretrained(dir)`"
        )
    unet = UNet2DModel.from_pretrained(unet_dir, use_safetensors=True, local_files_only=True)
    scheduler_file = next(
        (
            f
            for f in (path / "scheduler" / "scheduler_config.json", path / "scheduler_config.json")
            if f.is_file()
        ),
        None,
    )
    scheduler = json.loads(scheduler_file.read_text()) if scheduler_file else {}
    schedule, prediction = schedule_from_config(scheduler)
    clip = scheduler.get("clip_sample_range", 1.0) if scheduler.get("clip_sample", True) else None
    size = unet.config.sample_size
    hw = (size, size) if isinstance(size, int) else tuple(size)
    model = DiffusersUNet(unet).to(device).eval().requires_grad_(False)
    files = tuple(sorted(unet_dir.glob("*.safetensors")))
    return DiffusersCheckpoint(model, schedule, prediction, (unet.config.in_channels, *hw), path, files, clip)
