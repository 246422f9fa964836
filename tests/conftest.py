"""Suite-wide settings and shared fixtures.

One intra-op thread per test process, also for the CLI in-process or in a subprocess
($DDIM_THREADS): the suite runs under pytest-xdist with one worker per core, and more threads
only fight over the cores. `trained_run`: the one tiny trained run of the session
(trained once per test process), a run folder with checkpoints after steps 1 and 2; read it, never
write into it (copy it first). The exact Gaussian oracle and its helpers live in oracles.py."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

torch.set_num_threads(1)
os.environ["DDIM_THREADS"] = "1"  # the CLI's thread choice (ddim.device.choose_threads)

TINY_SIZE = 8
# a tiny UNet on 8x8 digits, as the CLI trains it
TINY_TRAIN = ["--size", str(TINY_SIZE), "--base-channels", "8", "--channel-mult", "1,2", "--batch-size", "8"]
QUIET_TRAIN = ["--sample-every", "0", "--log-every", "0", "--device", "cpu"]


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`ddim train` of a tiny UNet on 8x8 digits for 2 steps, a checkpoint after each."""
    from ddim.cli import main

    out = tmp_path_factory.mktemp("trained") / "run"
    argv = ["train", "--data", "digits", "--out", str(out), *TINY_TRAIN, "--steps", "2"]
    assert main([*argv, "--checkpoint-every", "1", *QUIET_TRAIN]) == 0
    return out
