"""Data-parallel training under torchrun with gloo on the CPU: 2 processes with per-rank batch B
equal 1 process with batch 2B; ranks agree; a failing rank stops the job."""

import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import safetensors.torch
import torch
from dist_worker import tiny_run

from ddim.models import UNet

WORKER = Path(__file__).with_name("dist_worker.py")
# Weights computed by 1 and by 2 processes differ by float32 all-reduce rounding, which AdamW's
# first steps amplify: they move a weight by about lr (1e-3) whatever the size of its gradient,
# so a gradient near zero that rounds the other way moves by a slightly different amount
# (measured: up to 1.4e-5 with the fused kernel, 0.8e-5 with the per-tensor loop).
ROUNDING = 2e-5


def torchrun(nproc: int, *args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={nproc}",
        str(WORKER),
        *args,
    ]
    env = {"OMP_NUM_THREADS": "1", "DDIM_DIST_TIMEOUT": "60", "PATH": "/usr/bin:/bin"}
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)


def weights(path: Path) -> dict[str, torch.Tensor]:
    return safetensors.torch.load_file(path)


@pytest.mark.slow
def test_two_processes_equal_one_process_with_the_global_batch(tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    for nproc, out in ((1, one), (2, two)):
        done = torchrun(nproc, str(out), "train")
        assert done.returncode == 0, done.stderr[-3000:]
    # both ranks end with the same weights and the same EMA
    for kind in ("model", "ema"):
        r0, r1 = weights(two / f"rank0-{kind}.safetensors"), weights(two / f"rank1-{kind}.safetensors")
        assert all(torch.equal(r0[k], r1[k]) for k in r0)
    # and with what one process computes from the same global batches, up to rounding
    single, double = weights(one / "rank0-model.safetensors"), weights(two / "rank0-model.safetensors")
    worst = max((single[k] - double[k]).abs().max().item() for k in single)
    assert worst < ROUNDING
    torch.manual_seed(tiny_run().train.seed)  # the trainer's initialisation
    initial = UNet(tiny_run().model).state_dict()
    moved = max((single[k] - initial[k]).abs().max().item() for k in single)
    assert moved > 100 * worst  # the runs did train: the agreement is not between untouched weights


@pytest.mark.slow
def test_a_checkpoint_of_two_processes_resumes_with_one(tmp_path):
    resumed, straight = tmp_path / "resumed", tmp_path / "straight"
    for nproc, out, args in (
        (2, resumed, ("train", "2")),
        (1, resumed, ("resume", "3")),
        (1, straight, ("train",)),
    ):
        done = torchrun(nproc, str(out), *args)
        assert done.returncode == 0, done.stderr[-3000:]
    a, b = weights(resumed / "rank0-model.safetensors"), weights(straight / "rank0-model.safetensors")
    assert max((a[k] - b[k]).abs().max().item() for k in a) < ROUNDING


@pytest.mark.slow
def test_a_failing_rank_stops_the_whole_run(tmp_path):
    started = time.monotonic()
    done = torchrun(2, str(tmp_path), "fail")
    assert done.returncode != 0
    assert "broken on purpose" in done.stderr + done.stdout
    assert time.monotonic() - started < 200  # stopped, not hung until the subprocess timeout


@pytest.mark.slow
def test_distributed_sampling_equals_one_process(tmp_path):
    from ddim.cli import main

    run = tmp_path / "run"
    tiny = ["--size", "8", "--base-channels", "8", "--channel-mult", "1,2", "--batch-size", "8"]
    assert main(["train", "--data", "digits", "--out", str(run), *tiny, "--steps", "2", "--sample-every", "0",
                 "--log-every", "0", "--device", "cpu"]) == 0  # fmt: skip
    arrays = {}
    for nproc in (1, 2):
        npz = tmp_path / f"{nproc}.npz"
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
               "-m", "ddim", "sample", "--checkpoint", str(run), "--num-samples", "7", "--steps", "4",
               "--eta", "1", "--batch-size", "3", "--out", str(tmp_path / f"{nproc}.png"),
               "--npz", str(npz), "--out-dir", str(tmp_path / f"pngs{nproc}")]  # fmt: skip
        env = {"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"}
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env=env)
        assert done.returncode == 0, done.stderr[-3000:]
        arrays[nproc] = np.load(npz)["images"]
    assert arrays[1].shape == (7, 8, 8, 1)
    # 2 ranks taking turns by batch of 3 (rank 0: 0-2 and 6, rank 1: 3-5), gathered = 1 process
    assert np.array_equal(arrays[1], arrays[2])
    pngs = [sorted(p.name for p in (tmp_path / f"pngs{nproc}").iterdir()) for nproc in (1, 2)]
    assert pngs[0] == pngs[1] and len(pngs[0]) == 7
    for name in pngs[0]:
        assert (tmp_path / "pngs1" / name).read_bytes() == (tmp_path / "pngs2" / name).read_bytes()


@pytest.mark.parametrize("n, batch, world", [(7, 3, 2), (10, 2, 3), (5, 8, 4), (12, 4, 3), (1, 1, 2)])
def test_batches_by_round_gather_to_every_item_in_order(monkeypatch, n, batch, world):
    """Each round's batches, concatenated in rank order, continue where the last round ended."""
    import ddim.distributed as distributed

    monkeypatch.setattr(distributed, "world_size", lambda: world)
    shares = []
    for r in range(world):
        monkeypatch.setattr(distributed, "rank", lambda r=r: r)
        shares.append(distributed.batches_by_round(n, batch))
    assert len({len(share) for share in shares}) == 1  # every rank joins every round's gather
    order = [i for rounds in zip(*shares) for first, stop in rounds for i in range(first, stop)]
    assert order == list(range(n))
    assert all(stop - first <= batch for share in shares for first, stop in share)
