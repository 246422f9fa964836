"""torch.compile for a denoising network, with the compiled graphs cached between runs.

    net = compile_model(net)     # what --compile and ddim.load(..., compile=True) do

Inductor's FX graph cache and AOTAutograd cache (on by default in torch >= 2.5) are pointed at
`cache_dir()` ($DDIM_CACHE_DIR, else ~/.cache/ddim, + /inductor), so a second run with the same
model and shapes loads its kernels instead of compiling them again. Shapes are static: a new
batch size compiles (and caches) once more.

Off unless asked for. Measured on a quiet 2-core CPU (docs/performance.md,
benchmarks/compile_speedup.py): a training step gains 1.07-1.11x and a sampling call 1.5x, so a
first compile (about 110 s for training, 60 s for sampling, empty cache) repays itself after about
6,000 training steps or 2,000 sampling calls, and after a few hundred once cached. A rule that
turned it on would also change images: compiled kernels round differently from eager ones. If
compiling fails (no C++ compiler, an unsupported op), torch falls back to running the model
eagerly.
"""

from __future__ import annotations

import os
from pathlib import Path

from torch import nn


def cache_dir() -> Path:
    """Where ddim keeps caches: $DDIM_CACHE_DIR, else $XDG_CACHE_HOME/ddim, else ~/.cache/ddim."""
    if os.environ.get("DDIM_CACHE_DIR"):
        return Path(os.environ["DDIM_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "ddim"


def use_compile_cache() -> Path:
    """Point inductor's on-disk caches (FX graphs, AOTAutograd, kernels) at cache_dir() / inductor,
    unless the user chose another TORCHINDUCTOR_CACHE_DIR (torch fills in its default in /tmp
    when dynamo is first imported, e.g. by an optimizer: that one is replaced); returns it."""
    from torch._inductor.runtime.cache_dir_utils import default_cache_dir

    if os.environ.get("TORCHINDUCTOR_CACHE_DIR") in (None, "", default_cache_dir()):
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(cache_dir() / "inductor")
    import torch._functorch.config as functorch_config
    import torch._inductor.config as inductor_config

    inductor_config.fx_graph_cache = True
    functorch_config.enable_autograd_cache = True
    return Path(os.environ["TORCHINDUCTOR_CACHE_DIR"])


def compile_model(model: nn.Module, enabled: bool = True) -> nn.Module:
    """`model` compiled with torch.compile (inductor, static shapes, graphs cached between runs),
    or `model` itself when `enabled` is False. The compiled module shares the parameters (and
    state_dict keys, under `_orig_mod.`) of `model`: save and load `model`, call the result."""
    if not enabled:
        return model
    use_compile_cache()
    import torch._dynamo

    torch._dynamo.config.suppress_errors = True  # a failed compile runs the model eagerly
    return torch.compile(model, dynamic=False)
