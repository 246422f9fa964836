"""What resuming needs besides the weights (a checkpoint's state.pt): the step, the position in
the data stream, the optimizer state and every RNG state, plus the data's fingerprint. `capture`
takes it after a completed step; `restore` puts it back (after `checkpoint.read_state` checked
its fields), refusing with one line naming the file a state that does not fit the run."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor

from ddim.training.checkpoint import CheckpointError


def capture(step: int, position: int, data_gen: torch.Generator, noise_gen: torch.Generator) -> dict:
    """The state after `step` completed steps, except the optimizer's (added when saving: it is
    only read then, and changes only in the optimizer step itself)."""
    cuda = noise_gen.device.type == "cuda"
    return {
        "step": step,
        "data_position": position,
        "rng": {
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if cuda else [],
            "data": data_gen.get_state(),
            "noise": noise_gen.get_state(),
        },
    }


def restore(
    state: dict,
    file: Path,
    optimizer: torch.optim.Optimizer,
    data_gen: torch.Generator,
    noise_gen: torch.Generator,
) -> None:
    """Load a checked state into the optimizer and the generators; a state that does not fit them
    (other parameter shapes, RNG states of another size) is refused naming `file`."""
    try:
        optimizer.load_state_dict(state["optimizer"])
        for group in optimizer.param_groups:
            for p in group["params"]:
                for key, value in optimizer.state.get(p, {}).items():
                    if isinstance(value, Tensor) and value.dim() > 0 and value.shape != p.shape:
                        raise ValueError(
                            f"optimizer {key} of shape {tuple(value.shape)} for {tuple(p.shape)}"
                        )
        rng = state["rng"]
        torch.set_rng_state(rng["torch"])
        if rng["cuda"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(rng["cuda"])
        data_gen.set_state(rng["data"])
        noise_gen.set_state(rng["noise"])
    except (ValueError, RuntimeError, KeyError, TypeError, IndexError) as e:
        raise CheckpointError(
            f"{file} does not fit this run ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); "
            "resume from another checkpoint"
        ) from None
