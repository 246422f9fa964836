"""The saved configuration of a run: frozen dataclasses for the diffusion process and the training
loop, and `RunConfig`, which bundles them with the model's `UNetConfig` and the data's `DataConfig`.

Every config round-trips through JSON: `RunConfig.from_dict(json.loads(json.dumps(run.to_dict())))
== run`. One check serves the library, the CLI and a loaded config.json: `RunConfig.__post_init__`
checks every field of every section against its type hint (`check_types`) and each section's own
`__post_init__` checks ranges (finite numbers included), raising `BadValue` naming the field.
`from_dict` also refuses unknown and missing keys; only `fill_defaults=True` (a checkpoint
format upgrade) fills missing keys with defaults.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from ddim.data import DataConfig
from ddim.errors import BadValue
from ddim.models import UNetConfig
from ddim.objectives import WEIGHTINGS
from ddim.prediction import PREDICTIONS
from ddim.schedule import SCHEDULE_KINDS, NoiseSchedule


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise BadValue(message)


@dataclass(frozen=True)
class DiffusionConfig:
    """The forward process and what the network predicts."""

    schedule: str = "linear"  # one of SCHEDULE_KINDS
    timesteps: int = 1000
    prediction: str = "v"  # one of PREDICTIONS (v: Salimans & Ho 2022; docs/defaults.md)
    zero_terminal_snr: bool = False  # Lin et al. 2023: rescale so the last step has SNR 0

    def __post_init__(self) -> None:
        check_types(self, "diffusion")
        _check(
            self.schedule in SCHEDULE_KINDS,
            f"schedule must be one of {SCHEDULE_KINDS}, got {self.schedule!r}",
        )
        _check(self.timesteps >= 2, f"timesteps must be at least 2, got {self.timesteps}")
        _check(
            self.prediction in PREDICTIONS,
            f"prediction must be one of {PREDICTIONS}, got {self.prediction!r}",
        )

    def make_schedule(self) -> NoiseSchedule:
        schedule = NoiseSchedule.named(self.schedule, self.timesteps)
        return schedule.rescale_zero_terminal_snr() if self.zero_terminal_snr else schedule


EMA_WARMUPS = ("power", "tf", "none")  # ddim.training.ema: EDM2's power function, TensorFlow's, none


@dataclass(frozen=True)
class TrainConfig:
    """The training loop. `batch_size` is the number of examples per optimizer step; with
    `grad_accum` > 1 it is split into that many micro-batches (so it must divide by it). A period
    (`sample_every`, `checkpoint_every`, `log_every`) of 0 turns that event off, except that the
    last step always writes a checkpoint. `keep_last` = 0 keeps every checkpoint."""

    steps: int = 2000
    batch_size: int = 64
    lr: float = 1e-3
    warmup_steps: int = 100
    grad_clip: float = 1.0  # max global gradient norm; 0: no clipping
    weight_decay: float = 0.0
    ema_decay: float = 0.9999  # the most the EMA decay reaches (see ema_warmup)
    ema_warmup: str = "power"  # one of EMA_WARMUPS: the decay's profile over the run (training/ema.py)
    bf16: bool = False
    grad_accum: int = 1
    seed: int = 0
    weighting: str = "min_snr"  # one of WEIGHTINGS
    min_snr_gamma: float = 5.0
    offset_noise: float = 0.0
    label_dropout: float = 0.1  # class-conditional models: P(label -> null class), for CFG
    sample_every: int = 500
    sample_steps: int = 50
    sample_n: int = 64
    checkpoint_every: int = 500
    keep_last: int = 3
    log_every: int = 50
    device: str = "auto"
    num_workers: int = 0  # DataLoader workers for datasets not held in memory

    def __post_init__(self) -> None:
        check_types(self, "train")
        for name in ("steps", "batch_size", "grad_accum", "sample_steps", "sample_n"):
            _check(getattr(self, name) >= 1, f"{name} must be at least 1, got {getattr(self, name)}")
        for name in (
            "warmup_steps",
            "grad_clip",
            "weight_decay",
            "offset_noise",
            "sample_every",
            "checkpoint_every",
            "keep_last",
            "log_every",
            "num_workers",
            "seed",
        ):
            _check(getattr(self, name) >= 0, f"{name} must be >= 0, got {getattr(self, name)}")
        _check(0 < self.lr <= 1, f"lr must lie in (0, 1] (AdamW's rate; 1e-4..1e-3 is usual), got {self.lr}")
        _check(
            self.offset_noise <= 1,
            f"offset_noise must lie in [0, 1] (0.1 is usual), got {self.offset_noise}",
        )
        _check(
            self.seed < 2**64, f"seed must be below 2**64 (torch's generators take 64 bits), got {self.seed}"
        )
        _check(self.min_snr_gamma > 0, f"min_snr_gamma must be > 0, got {self.min_snr_gamma}")
        _check(0 <= self.ema_decay < 1, f"ema_decay must lie in [0, 1), got {self.ema_decay}")
        _check(0 <= self.label_dropout < 1, f"label_dropout must lie in [0, 1), got {self.label_dropout}")
        _check(
            self.ema_warmup in EMA_WARMUPS,
            f"ema_warmup must be one of {EMA_WARMUPS}, got {self.ema_warmup!r}",
        )
        _check(self.weighting in WEIGHTINGS, f"weighting must be one of {WEIGHTINGS}, got {self.weighting!r}")
        _check(
            self.batch_size % self.grad_accum == 0,
            f"batch_size {self.batch_size} must be divisible by grad_accum {self.grad_accum} "
            "(batch_size counts the examples of one optimizer step, across its micro-batches)",
        )

    @property
    def micro_batch(self) -> int:
        return self.batch_size // self.grad_accum


@dataclass(frozen=True)
class RunConfig:
    """Everything a training run needs and a checkpoint stores."""

    model: UNetConfig = field(default_factory=UNetConfig)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def __post_init__(self) -> None:
        for name, cls in _SECTIONS.items():
            value = getattr(self, name)
            _check(
                isinstance(value, cls),
                f"RunConfig.{name} must be a {cls.__name__}, got {type(value).__name__}",
            )
            check_types(value, name)
        _check(
            self.model.out_channels == self.model.in_channels,
            f"model.out_channels ({self.model.out_channels}) must equal model.in_channels "
            f"({self.model.in_channels}): the network predicts an image-shaped target",
        )
        _check(
            self.train.sample_steps <= self.diffusion.timesteps,
            f"train.sample_steps ({self.train.sample_steps}) cannot exceed diffusion.timesteps "
            f"({self.diffusion.timesteps})",
        )

    def image_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of the images the model trains on."""
        size = self.data.size
        if size is None:  # the dataset's own size: look at one image
            from ddim.data import build_dataset

            return tuple(build_dataset(self.data)[0][0].shape)
        height, width = (size, size) if isinstance(size, int) else size
        return self.model.in_channels, height, width

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (tuples become lists once dumped); inverse of `from_dict`."""
        return {name: asdict(getattr(self, name)) for name in _SECTIONS}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], *, fill_defaults: bool = False) -> RunConfig:
        """Build and validate a RunConfig. A missing section or key is an error (an edited config
        must never silently change meaning) unless `fill_defaults`, which a checkpoint format
        upgrade passes explicitly to take the defaults of keys its version did not have."""
        sections = _fields_of(RunConfig, d, "run config", fill_defaults)
        return cls(
            **{name: _build(_SECTIONS[name], value, name, fill_defaults) for name, value in sections.items()}
        )


_SECTIONS = {"model": UNetConfig, "diffusion": DiffusionConfig, "data": DataConfig, "train": TrainConfig}


def _fields_of(cls: type, d: Any, where: str, fill_defaults: bool) -> dict[str, Any]:
    """d as a dict, after checking that it is a mapping whose keys are the fields of cls."""
    _check(isinstance(d, Mapping), f"{where} must be a JSON object (a mapping), got {type(d).__name__}")
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(d) - set(names))
    _check(
        not unknown,
        f"unknown key(s) {', '.join(map(repr, unknown))} in {where}; valid keys: {', '.join(names)}",
    )
    missing = [name for name in names if name not in d]
    _check(
        fill_defaults or not missing,
        f"{where} lacks the key(s) {', '.join(map(repr, missing))}; a missing key would silently take "
        "a default and change the run's meaning: restore it from the original config",
    )
    return dict(d)


def _type_name(hint: Any) -> str:
    return getattr(hint, "__name__", None) if isinstance(hint, type) else str(hint).replace("typing.", "")


def _fits(value: Any, hint: Any) -> bool:
    """Whether a (JSON-loaded or Python) value fits a field's type hint: int, float, bool, str,
    None, unions of them, and tuples (JSON lists are accepted for tuples)."""
    if hint is Any:
        return True
    if hint is type(None) or hint is None:
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:  # finite: a NaN or an infinity is never a meaningful setting
        return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    if hint is str:
        return isinstance(value, str)
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_fits(value, arg) for arg in args)
    if origin is tuple:
        if not isinstance(value, tuple | list):
            return False
        if len(args) == 2 and args[1] is Ellipsis:
            return all(_fits(v, args[0]) for v in value)
        return len(value) == len(args) and all(_fits(v, a) for v, a in zip(value, args, strict=True))
    return isinstance(value, hint) if isinstance(hint, type) else True  # other hints: not checked here


def _check_values(cls: type, values: Mapping[str, Any], where: str) -> None:
    hints = typing.get_type_hints(cls)
    for key, value in values.items():
        if not _fits(value, hints[key]):
            finite = " (finite)" if "float" in _type_name(hints[key]) else ""
            raise BadValue(f"{where}.{key} must be of type {_type_name(hints[key])}{finite}, got {value!r}")


def check_types(config: Any, where: str) -> None:
    """Raise BadValue naming the first field of a config dataclass whose value does not fit its
    type hint (floats must be finite)."""
    _check_values(type(config), {f.name: getattr(config, f.name) for f in dataclasses.fields(config)}, where)


def _build(cls: type, d: Any, where: str, fill_defaults: bool) -> Any:
    """cls(**d) with unknown, missing and mistyped keys reported by name; the config's own checks
    then report values out of range."""
    values = _fields_of(cls, d, where, fill_defaults)
    _check_values(cls, values, where)
    try:
        return cls(**values)
    except BadValue as e:
        raise BadValue(f"invalid {where} config: {e}") from e
