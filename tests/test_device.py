"""Devices and threads: resolve_device's checks, the CPU count from affinity and the cgroup quota
(v2 and v1 files written to a temporary folder), and the thread choice on a busy machine."""

import os

import pytest
import torch

import ddim
from ddim import device
from ddim.device import (
    cgroup_cpu_limit,
    choose_threads,
    cpu_busy_seconds,
    resolve_device,
    threads_beside,
    usable_cpus,
)
from ddim.errors import BadValue


def test_resolve_device():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(BadValue, match="unknown device"):
        resolve_device("gpu")
    for name in ("meta", "xla", "cuda:99"):  # devices torch names but cannot train on here
        with pytest.raises(BadValue, match=repr(name)):
            resolve_device(name)


def test_cgroup_v2_and_v1_quota(tmp_path):
    (tmp_path / "cpu.max").write_text("150000 100000\n")
    assert cgroup_cpu_limit(tmp_path) == 1.5
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert cgroup_cpu_limit(tmp_path) is None
    v1 = tmp_path / "v1"
    (v1 / "cpu").mkdir(parents=True)
    (v1 / "cpu" / "cpu.cfs_quota_us").write_text("50000\n")
    (v1 / "cpu" / "cpu.cfs_period_us").write_text("100000\n")
    assert cgroup_cpu_limit(v1) == 0.5
    (v1 / "cpu" / "cpu.cfs_quota_us").write_text("-1\n")
    assert cgroup_cpu_limit(v1) is None
    assert cgroup_cpu_limit(tmp_path / "missing") is None


def test_usable_cpus_takes_the_smaller_of_affinity_and_quota(tmp_path):
    mask = len(os.sched_getaffinity(0))
    (tmp_path / "cpu.max").write_text("50000 100000\n")  # half a CPU: still one thread
    assert usable_cpus(tmp_path) == 1
    (tmp_path / "cpu.max").write_text(f"{(mask + 8) * 100000} 100000\n")
    assert usable_cpus(tmp_path) == mask


def test_choose_threads_sets_torch(monkeypatch):
    before = torch.get_num_threads()
    try:
        assert choose_threads(1) == 1 and torch.get_num_threads() == 1
        assert device._governor is None  # a count the caller chose is kept
        monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
        monkeypatch.delenv("DDIM_THREADS", raising=False)  # conftest sets it for the suite
        assert choose_threads() == usable_cpus() == torch.get_num_threads()
        assert device._governor is not None or usable_cpus() < len(os.sched_getaffinity(0))
        monkeypatch.setenv("OMP_NUM_THREADS", "1")  # the user's choice: torch's count, kept
        torch.set_num_threads(1)
        assert choose_threads() == 1 and device._governor is None
        monkeypatch.setenv("DDIM_THREADS", "2")
        assert choose_threads() == 2 and torch.get_num_threads() == 2
        monkeypatch.setenv("DDIM_THREADS", "zero")
        with pytest.raises(BadValue, match="DDIM_THREADS"):
            choose_threads()
    finally:
        device._governor = None
        torch.set_num_threads(before)


def test_threads_beside_a_busy_process():
    assert threads_beside(2, 0.0) == 2
    assert threads_beside(2, 0.3) == 2  # a light load: keep both
    assert threads_beside(2, 0.7) == 1  # `yes` beside two spinning threads gets ~2/3 of a CPU
    assert threads_beside(2, 1.0) == 1
    assert threads_beside(2, 5.0) == 1  # never none
    assert threads_beside(8, 3.0) == 5


def test_cpu_busy_seconds_counts_only_our_cpus(tmp_path):
    tick = os.sysconf("SC_CLK_TCK")
    stat = tmp_path / "stat"
    #                user nice system idle iowait irq softirq steal guest guest_nice
    stat.write_text(
        f"cpu  {3 * tick} 0 0 {9 * tick} 0 0 0 0 0 0\n"
        f"cpu0 {tick} 0 {tick} {5 * tick} {2 * tick} 0 0 0 0 0\n"
        f"cpu1 {tick} 0 0 {4 * tick} 0 0 0 0 {7 * tick} 0\n"  # guest time is inside user time
        "intr 12345\n"
    )
    assert cpu_busy_seconds({0}, stat) == 2.0
    assert cpu_busy_seconds({0, 1}, stat) == 3.0
    assert cpu_busy_seconds({0}, tmp_path / "missing") is None


def test_the_thread_count_does_not_change_results():
    """adjust_threads may change the count mid-run; the images and the gradients must not change
    with it (seeded sampling is promised to give the same images whatever the load)."""
    from ddim.models import UNet, UNetConfig

    torch.manual_seed(0)
    net = UNet(UNetConfig(in_channels=1))
    x, t = torch.randn(32, 1, 16, 16), torch.randint(0, 1000, (32,))
    before, results = torch.get_num_threads(), []
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            net.zero_grad()
            out = net(x, t)
            out.square().mean().backward()
            results.append(torch.cat([out.flatten(), *(p.grad.flatten() for p in net.parameters())]))
    finally:
        torch.set_num_threads(before)
    assert torch.equal(results[0], results[1])


def test_the_governor_follows_other_processes(monkeypatch):
    """Busy time on our CPUs beyond our own process time is other processes' load: the thread
    count follows it (a fake clock and /proc/stat: another process busy on 1 CPU of 2, then gone)."""
    clock, busy, own = [100.0], [50.0], [10.0]
    monkeypatch.setattr(device.time, "monotonic", lambda: clock[0])
    monkeypatch.setattr(device.time, "process_time", lambda: own[0])
    monkeypatch.setattr(device, "cpu_busy_seconds", lambda cpus, stat=None: busy[0])
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        governor = device._Governor({0, 1}, period=2.0)
        clock[0], busy[0], own[0] = 101.0, 54.0, 11.0  # within the period: not looked at
        governor()
        assert torch.get_num_threads() == 2
        clock[0], busy[0], own[0] = 102.0, 54.0, 12.0  # 4 CPU-s busy in 2 s, 2 of them ours
        governor()
        assert torch.get_num_threads() == 1
        clock[0], busy[0], own[0] = 104.0, 56.0, 14.0  # the other process ended
        governor()
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_compile_model_caches_under_the_ddim_cache_dir(monkeypatch, tmp_path):
    from ddim.models.compile import compile_model

    monkeypatch.setenv("DDIM_CACHE_DIR", str(tmp_path))
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)
    net = torch.nn.Linear(2, 2)
    assert compile_model(net, enabled=False) is net
    calls = []
    monkeypatch.setattr(torch, "compile", lambda model, **kw: calls.append(kw) or ("compiled", model))
    assert compile_model(net) == ("compiled", net)
    assert calls == [{"dynamic": False}]
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(tmp_path / "inductor")
    from torch._inductor.runtime.cache_dir_utils import default_cache_dir

    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", default_cache_dir())  # torch's own default: replaced
    compile_model(net)
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(tmp_path / "inductor")
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "mine"))  # the user's: kept
    compile_model(net)
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(tmp_path / "mine")


def test_compile_reaches_training_and_loading(monkeypatch, trained_run, tmp_path, capsys):
    """--compile / compile=True wrap the network that the training loss and the pipeline call;
    the command says first that the first step will wait."""
    from ddim.cli import main

    compiled = []
    monkeypatch.setattr(torch, "compile", lambda model, **kw: compiled.append(type(model).__name__) or model)
    monkeypatch.setenv("DDIM_CACHE_DIR", str(tmp_path / "cache"))
    pipe = ddim.load(trained_run, device="cpu", compile=True)
    assert compiled == ["UNet"] and pipe.model is not None
    ddim.load(trained_run, device="cpu")  # off by default for sampling
    assert compiled == ["UNet"]
    out = str(tmp_path / "run")
    argv = ["train", "--data", "digits", "--out", out, "--size", "8", "--base-channels", "8",
            "--channel-mult", "1,2", "--timesteps", "20", "--batch-size", "4", "--steps", "1",
            "--sample-every", "0", "--device", "cpu", "--compile"]  # fmt: skip
    capsys.readouterr()
    assert main(argv) == 0
    assert compiled == ["UNet", "UNet"]
    assert "compiling the network (--compile)" in capsys.readouterr().out
    grid = str(tmp_path / "grid.png")
    assert main(["sample", "--checkpoint", out, "--n", "2", "--steps", "2", "--out", grid, "--compile"]) == 0
    assert compiled == ["UNet", "UNet", "UNet"]
    assert "compiling the network (--compile)" in capsys.readouterr().out
