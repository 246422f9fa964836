"""torch.compile for a denoising network, with the compiled graphs cached between runs.

    net = compile_model(net, device)           # or compile_model(net, device, enabled=None): auto

Inductor's FX graph cache and AOTAutograd cache (on by default in torch >= 2.5) are pointed at
`cache_dir()` ($DDIM_CACHE_DIR, else ~/.cache/ddim, + /inductor), so a second run with the same
model and shapes loads its kernels instead of compiling them again. Shapes are static: a new
batch size compiles (and caches) once more.

`enabled=None` (auto) does not compile yet (`compile_pays`). What was measured
(docs/performance.md, benchmarks/compile_speedup.py): on this CPU a training step ran 1.75x
(16x16) and 1.83x (32x32) faster compiled, and a first compile (empty cache) paid for itself after
1170 and 660 steps (8-16 steps with the cache filled), so a CPU training run of PAYS_AFTER_STEPS
steps or more is where auto would compile. Sampling (a few hundred model calls do not repay a
first compile) and GPUs (not measured) stay eager. If compiling fails (no C++ compiler, an
unsupported op), torch falls back to running the model eagerly.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
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


PAYS_AFTER_STEPS = 2000


def compile_pays(device: torch.device | str, train_steps: int = 0) -> bool:
    """The auto choice: never, for now. Where the measurements say it pays (a CPU training run of
    PAYS_AFTER_STEPS steps or more, docs/performance.md) it is still off, for the reason below."""
    # Off until a compiled training run is proven end to end (a test run at 2000+ steps compiled
    # under a full disk and printed dynamo's warnings): measured pay-back, not yet the default.
    return False


def compile_model(
    model: nn.Module, device: torch.device | str, enabled: bool | None = True, train_steps: int = 0
) -> nn.Module:
    """`model` compiled with torch.compile (inductor, static shapes, graphs cached between runs),
    or `model` itself when `enabled` is False, or None and `compile_pays(device, train_steps)` says
    no (`train_steps`: the optimizer steps the model will be trained for; 0 when sampling). The
    compiled module shares the parameters (and state_dict keys, under `_orig_mod.`) of `model`:
    save and load `model`, call the result."""
    if enabled is None:
        enabled = compile_pays(device, train_steps)
    if not enabled:
        return model
    use_compile_cache()
    import torch._dynamo

    torch._dynamo.config.suppress_errors = True  # a failed compile runs the model eagerly
    return torch.compile(model, dynamic=False)
