"""Training: the loop (`train`), the LR and EMA schedules as pure functions, and checkpoints
(`load_checkpoint`)."""

from ddim.training.checkpoint import CheckpointError, LoadedCheckpoint, load_checkpoint
from ddim.training.ema import ema_decay_at, ema_update
from ddim.training.loop import train
from ddim.training.optim import lr_at

__all__ = [
    "CheckpointError",
    "LoadedCheckpoint",
    "ema_decay_at",
    "ema_update",
    "load_checkpoint",
    "lr_at",
    "train",
]
