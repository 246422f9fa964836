"""Training: the loop (`train`), EMA as pure functions, and checkpoints (`load_checkpoint`)."""

from ddim.training.checkpoint import CheckpointError, LoadedCheckpoint, load_checkpoint
from ddim.training.ema import ema_decay_at, ema_update
from ddim.training.loop import lr_at, train

__all__ = [
    "CheckpointError",
    "LoadedCheckpoint",
    "ema_decay_at",
    "ema_update",
    "load_checkpoint",
    "lr_at",
    "train",
]
