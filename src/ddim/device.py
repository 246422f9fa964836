"""Where the work runs: `resolve_device` (a device name -> torch.device) and `choose_threads`
(torch's intra-op threads from the CPUs this process may use, so that a busy or shared machine
costs a run its fair share and no more).

    ddim.device.choose_threads()   # once, at CLI start (ddim.cli.main does it)

Threads: the usable CPUs are the affinity mask (os.sched_getaffinity) capped by the cgroup's CPU
quota (v2 cpu.max, v1 cpu.cfs_quota_us / cpu.cfs_period_us). A parallel region is only as fast
as its slowest thread, so a thread that shares its core with a busy process makes the others
wait; spinning while they wait (OpenMP's default) burns the CPU time the late thread needs, and
on this 2-core machine beside other busy processes made a training step 10x slower or worse
(benchmarks/busy_machine.py; docs/performance.md). With waiting threads asleep, one thread per
usable CPU was faster than one thread even on the busy machine, so the load is not used to
lower the count. OMP_WAIT_POLICY=PASSIVE
(threads that wait sleep instead of spinning) only works if set before torch starts OpenMP, so
this module calls `passive_wait()` when imported, and `ddim/__init__.py` imports it first: it
sets the policy unless torch was imported before ddim or the user chose a policy.
"""

from __future__ import annotations

import math
import os
import sys
from pathlib import Path

from ddim.errors import BadValue


def resolve_device(name: str):
    """The device named, after checking that torch can compute on it: "auto" is CUDA when
    available, else the CPU; or "cpu", "cuda", "cuda:N", "mps"."""
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    fix = "use 'auto', 'cpu', 'cuda' or 'cuda:N'"
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        raise BadValue(f"unknown device {name!r}; {fix}") from None
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise BadValue(f"device {name!r} requested but CUDA is not available; use 'cpu' or 'auto'")
        if device.index is not None and device.index >= count:
            raise BadValue(
                f"device {name!r} does not exist: there are {count} CUDA device(s), "
                f"cuda:0 to cuda:{count - 1}; "
                "pick one of them"
            )
    elif device.type == "mps":
        if not torch.backends.mps.is_available():
            raise BadValue(f"device {name!r} requested but MPS is not available; {fix}")
    elif device.type != "cpu":
        raise BadValue(f"device {name!r} cannot run training or sampling; {fix}")
    return device


def cgroup_cpu_limit(root: Path = Path("/sys/fs/cgroup")) -> float | None:
    """The CPU quota of this process's cgroup in CPUs (e.g. 1.5), or None when unlimited or not
    readable. cgroup v2: `cpu.max` = "QUOTA PERIOD" or "max PERIOD"; v1: cpu/cpu.cfs_quota_us
    (-1: unlimited) over cpu/cpu.cfs_period_us."""
    try:
        quota, period = (root / "cpu.max").read_text().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:
        quota = int((root / "cpu" / "cpu.cfs_quota_us").read_text())
        period = int((root / "cpu" / "cpu.cfs_period_us").read_text())
        return None if quota <= 0 or period <= 0 else quota / period
    except (OSError, ValueError):
        return None


def usable_cpus(root: Path = Path("/sys/fs/cgroup")) -> int:
    """CPUs this process may run on: its affinity mask, capped by the cgroup quota (rounded up)."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cpus = os.cpu_count() or 1
    limit = cgroup_cpu_limit(root)
    if limit is not None:
        cpus = min(cpus, max(1, math.ceil(limit)))
    return max(cpus, 1)


def passive_wait() -> bool:
    """Ask OpenMP's waiting threads to sleep rather than spin (OMP_WAIT_POLICY=PASSIVE, unless the
    user set a policy). True if it can take effect, i.e. torch was not imported yet."""
    if "torch" in sys.modules:
        return os.environ.get("OMP_WAIT_POLICY", "").upper() == "PASSIVE"
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    return os.environ["OMP_WAIT_POLICY"].upper() == "PASSIVE"


def choose_threads(threads: int | None = None) -> int:
    """Set torch's intra-op threads: `threads` if given, else $DDIM_THREADS, else `usable_cpus()`
    (no more than torch's current count when the passive wait is not in force, e.g. torch was
    imported before ddim); returns the count. OMP_NUM_THREADS set by the user
    is respected (torch already read it)."""
    import torch

    if threads is None and os.environ.get("DDIM_THREADS"):
        try:
            threads = int(os.environ["DDIM_THREADS"])
        except ValueError:
            threads = 0
        if threads < 1:
            raise BadValue(f"DDIM_THREADS={os.environ['DDIM_THREADS']!r}: use a whole number >= 1")
    if threads is None:
        if os.environ.get("OMP_NUM_THREADS"):
            return torch.get_num_threads()
        threads = usable_cpus()
        if os.environ.get("OMP_WAIT_POLICY", "").upper() != "PASSIVE":  # waiting threads spin: never more
            threads = min(threads, torch.get_num_threads())  # than torch (or the embedding program) chose
    torch.set_num_threads(threads)
    return threads


passive_wait()
