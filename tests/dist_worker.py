"""A training job for tests/test_distributed.py, launched by torchrun with 1 or 2 processes.

dist_worker.py OUT_DIR train [STEPS]    train a tiny model; each rank saves its final weights and EMA
dist_worker.py OUT_DIR resume STEPS     continue OUT_DIR's run to STEPS
dist_worker.py OUT_DIR fail             as train, but rank 1's data raises at once
"""

import os
import sys
from pathlib import Path

import safetensors.torch
import torch
from torch.utils.data import Dataset

from ddim.config import DiffusionConfig, RunConfig, TrainConfig
from ddim.data import DataConfig, load_dataset
from ddim.distributed import rank, shutdown
from ddim.models import UNetConfig
from ddim.training import train


class Broken(Dataset):
    def __len__(self):
        return 64

    def __getitem__(self, i):
        raise RuntimeError("this rank's data is broken on purpose")


def tiny_run(steps: int = 3) -> RunConfig:
    return RunConfig(
        model=UNetConfig(
            in_channels=1,
            base_channels=8,
            channel_mult=(1, 2),
            num_res_blocks=1,
            attention_resolutions=(),
            dropout=0.0,
        ),
        diffusion=DiffusionConfig(timesteps=100),
        data=DataConfig("digits", size=8),
        train=TrainConfig(
            steps=steps,
            batch_size=8,
            grad_accum=2,
            warmup_steps=1,
            sample_every=0,
            checkpoint_every=0,
            log_every=1,
            device="cpu",
        ),
    )


def main(out: str, mode: str, steps: str = "3") -> None:
    torch.set_num_threads(1)
    run = tiny_run(int(steps))
    dataset = load_dataset("digits", size=8, flip=True)
    if mode == "fail":
        dataset = Broken() if os.environ["RANK"] == "1" else dataset
    ckpt = train(run, out, progress=False, dataset=dataset, resume=mode == "resume")
    import ddim.training.checkpoint as c

    model, ema = (safetensors.torch.load_file(ckpt / name) for name in (c.MODEL, c.EMA))
    safetensors.torch.save_file(model, Path(out) / f"rank{rank()}-model.safetensors")
    safetensors.torch.save_file(ema, Path(out) / f"rank{rank()}-ema.safetensors")
    shutdown()


if __name__ == "__main__":
    main(*sys.argv[1:])
