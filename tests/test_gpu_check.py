"""benchmarks/gpu_check.py runs (at tiny sizes on the CPU) so that it cannot rot; and the
CUDA-marked tests it runs on a GPU: bf16 autocast, a one-GPU NCCL group, device-side noise."""

import importlib.util
from pathlib import Path

import pytest
import torch

import ddim
from ddim import PerSampleNoise
from ddim.models import UNet, UNetConfig

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
ROOT = Path(__file__).resolve().parents[1]


def _gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "benchmarks" / "gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_gpu_check_runs_tiny_on_the_cpu():
    pytest.importorskip("diffusers")  # the anchor it times against
    lines = _gpu_check().main(["--device", "cpu", "--tiny", "--skip-tests"])
    text = "\n".join(lines)
    assert "| ours | 8 |" in text and "| ours | 16 |" in text
    anchors = [line.split("|") for line in lines if line.startswith("| diffusers (width")]
    ours = [line.split("|") for line in lines if line.startswith("| ours |")]
    assert len(anchors) == 2
    for a, o in zip(anchors, ours):  # the anchor's width matches our forward FLOPs per image
        assert 0.6 < float(a[3]) / float(o[3]) < 1.6
    for sampler, eta in (("ddim", "0"), ("ddim", "1"), ("dpmpp_2m", "0"), ("ddpm", "1")):
        assert f"| {sampler}, eta={eta} |" in text
    assert text.count("n/a (CPU)") == 4


@pytest.mark.cuda
@cuda
def test_cuda_bf16_autocast_forward_is_close_to_float32():
    net = UNet(UNetConfig(in_channels=3, base_channels=32)).cuda().eval()
    x, t = torch.randn(4, 3, 32, 32, device="cuda"), torch.tensor([1, 200, 500, 999], device="cuda")
    with torch.no_grad():
        full = net(x, t)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            half = net(x, t)
    assert half.dtype == torch.bfloat16 and torch.isfinite(half).all()
    assert (half.float() - full).norm() / full.norm() < 0.05


@pytest.mark.cuda
@cuda
def test_cuda_one_gpu_nccl_group(tmp_path):
    import torch.distributed as dist

    dist.init_process_group("nccl", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        x = torch.arange(4.0, device="cuda")
        dist.all_reduce(x)
        assert torch.equal(x.cpu(), torch.arange(4.0))
        out = [torch.zeros(4, device="cuda")]
        dist.all_gather(out, x)
        assert torch.equal(out[0], x)
    finally:
        dist.destroy_process_group()


@pytest.mark.cuda
@cuda
def test_cuda_sampling_equals_the_cpu_with_philox_noise():
    schedule = ddim.NoiseSchedule.linear(100)
    model = lambda x, t: 0.5 * x  # noqa: E731
    runs = []
    for device in ("cpu", "cuda"):
        x_T = PerSampleNoise.from_seed(2, 16, philox=True).randn((3, 4, 4), device=device)
        noise = PerSampleNoise.from_seed(2, 16, stream=1, philox=True)
        runs.append(ddim.sample(model, x_T, schedule, 10, eta=1.0, generator=noise).cpu())
    assert torch.allclose(runs[0], runs[1], atol=1e-5)


@pytest.mark.cuda
@cuda
def test_cuda_training_with_bf16_and_the_fused_optimizer_resumes(tmp_path):
    """ddim's training loop on the GPU: bf16 autocast, AdamW fused on CUDA, a checkpoint that
    resumes; the weights stay finite and match a straight run (CUDA kernels may round
    differently from run to run, so within a tolerance)."""
    from safetensors.torch import load_file

    from ddim.config import DiffusionConfig, RunConfig, TrainConfig
    from ddim.data import DataConfig
    from ddim.training import train
    from ddim.training.checkpoint import read_state

    def run(steps: int) -> RunConfig:
        return RunConfig(
            model=UNetConfig(base_channels=8, channel_mult=(1, 2), groups=4, num_heads=2),
            diffusion=DiffusionConfig(timesteps=50),
            data=DataConfig(dataset="digits", size=8),
            train=TrainConfig(steps=steps, batch_size=8, sample_every=0, checkpoint_every=0, log_every=0,
                              bf16=True, device="cuda"),
        )  # fmt: skip

    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    last = train(run(3), straight, progress=False)
    train(run(2), resumed, progress=False)
    again = train(run(3), resumed, resume=True, progress=False)
    assert read_state(last, 3)["optimizer"]["param_groups"][0]["fused"]
    a, b = load_file(last / "model.safetensors"), load_file(again / "model.safetensors")
    assert all(torch.isfinite(a[k]).all() for k in a)
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-3
