"""Devices and threads: resolve_device's checks, the CPU count from affinity and the cgroup quota
(v2 and v1 files written to a temporary folder), and the thread choice on a busy machine."""

import os
import subprocess
import sys

import pytest
import torch

import ddim
from ddim.device import cgroup_cpu_limit, choose_threads, resolve_device, usable_cpus
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
        monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
        monkeypatch.delenv("DDIM_THREADS", raising=False)  # conftest sets it for the suite
        monkeypatch.setenv("OMP_WAIT_POLICY", "PASSIVE")
        assert choose_threads() == usable_cpus() == torch.get_num_threads()
        torch.set_num_threads(1)
        monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")  # spinning threads: never more than chosen before
        assert choose_threads() == 1
        monkeypatch.setenv("DDIM_THREADS", "2")
        assert choose_threads() == 2 and torch.get_num_threads() == 2
        monkeypatch.setenv("DDIM_THREADS", "zero")
        with pytest.raises(BadValue, match="DDIM_THREADS"):
            choose_threads()
    finally:
        torch.set_num_threads(before)


def test_importing_ddim_sets_a_passive_wait_before_torch_starts():
    code = "import os, ddim, torch; print(os.environ.get('OMP_WAIT_POLICY'))"
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    run = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert run.stdout.split() == ["PASSIVE"]


def test_compile_model_caches_under_the_ddim_cache_dir(monkeypatch, tmp_path):
    from ddim.models.compile import compile_model, compile_pays

    monkeypatch.setenv("DDIM_CACHE_DIR", str(tmp_path))
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)
    net = torch.nn.Linear(2, 2)
    assert compile_model(net, "cpu", enabled=False) is net
    assert compile_model(net, "cpu", enabled=None) is net  # auto: sampling is not compiled
    assert not compile_pays("cpu", 5000) and not compile_pays("cuda", 5000)  # opt-in for now
    calls = []
    monkeypatch.setattr(torch, "compile", lambda model, **kw: calls.append(kw) or ("compiled", model))
    assert compile_model(net, "cpu", enabled=True) == ("compiled", net)
    assert calls == [{"dynamic": False}]
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(tmp_path / "inductor")
    from torch._inductor.runtime.cache_dir_utils import default_cache_dir

    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", default_cache_dir())  # torch's own default: replaced
    compile_model(net, "cpu", enabled=True)
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(tmp_path / "inductor")
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "mine"))  # the user's: kept
    compile_model(net, "cpu", enabled=True)
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(tmp_path / "mine")


def test_compile_reaches_training_and_loading(monkeypatch, trained_run, tmp_path):
    """--compile / compile=True wrap the network that the training loss and the pipeline call."""
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
    assert main(argv) == 0
    assert compiled == ["UNet", "UNet"]
