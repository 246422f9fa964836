"""Where the work runs: `resolve_device` (a device name -> torch.device) and `choose_threads`
(torch's intra-op threads from the CPUs this process may use and the load on them, so that a
busy or shared machine costs a run its fair share and no more).

    ddim.device.choose_threads()   # once, at CLI start (ddim.cli.main does it)
    ddim.device.adjust_threads()   # in the loops: each training step, each sampling batch

Threads: the usable CPUs are the affinity mask (os.sched_getaffinity) capped by the cgroup's CPU
quota (v2 cpu.max, v1 cpu.cfs_quota_us / cpu.cfs_period_us). A parallel region is only as fast
as its slowest thread: beside a busy process, one of two threads shares a core, and OpenMP's
spinning waits burn the time it needs (4.7x slower on 2 cores beside `yes`), while sleeping waits
(OMP_WAIT_POLICY=PASSIVE) cost 1.7x on a quiet machine (benchmarks/busy_machine.py). So waits
spin, and `adjust_threads` follows the CPUs other processes leave, measured every 2 s.
"""

from __future__ import annotations

import math
import os
import time
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


def _affinity() -> set[int]:
    try:
        return os.sched_getaffinity(0)
    except AttributeError:  # not on Linux
        return set(range(os.cpu_count() or 1))


def usable_cpus(root: Path = Path("/sys/fs/cgroup")) -> int:
    """CPUs this process may run on: its affinity mask, capped by the cgroup quota (rounded up)."""
    cpus = len(_affinity())
    limit = cgroup_cpu_limit(root)
    if limit is not None:
        cpus = min(cpus, max(1, math.ceil(limit)))
    return max(cpus, 1)


def cpu_busy_seconds(cpus: set[int], stat: Path = Path("/proc/stat")) -> float | None:
    """CPU-seconds spent busy (not idle, not waiting for I/O) since boot on the CPUs `cpus`, by
    every process, from /proc/stat's per-CPU lines (proc(5)); None where it is not readable."""
    try:
        lines = stat.read_text().splitlines()
    except OSError:
        return None
    jiffies = 0
    for line in lines:
        name, *fields = line.split() or [""]
        if name.startswith("cpu") and name[3:].isdigit() and int(name[3:]) in cpus:
            ticks = [int(f) for f in fields]
            jiffies += sum(ticks[:8]) - ticks[3] - ticks[4]  # user..steal, less idle and iowait
    return jiffies / os.sysconf("SC_CLK_TCK")


def threads_beside(usable: int, others: float) -> int:
    """Threads for a parallel region that shares `usable` CPUs with other processes keeping
    `others` CPUs busy: the CPUs they leave, at least one (a thread that shares its core with a
    busy process makes every other thread of the region wait for it)."""
    return max(1, min(usable, round(usable - others)))


class _Governor:
    """Re-chooses torch's threads every `period` seconds from what other processes used of this
    process's CPUs since the last look (their busy time = the CPUs' busy time - our own)."""

    def __init__(self, cpus: set[int], period: float = 2.0) -> None:
        self.cpus, self.period = cpus, period
        self.last = (time.monotonic(), cpu_busy_seconds(cpus), time.process_time())

    def __call__(self) -> None:
        import torch

        now = time.monotonic()
        if now - self.last[0] < self.period:
            return
        busy, own = cpu_busy_seconds(self.cpus), time.process_time()
        if busy is None or self.last[1] is None:
            return
        others = max(0.0, (busy - self.last[1]) - (own - self.last[2])) / (now - self.last[0])
        self.last = (now, busy, own)
        threads = threads_beside(len(self.cpus), others)
        if threads != torch.get_num_threads():
            torch.set_num_threads(threads)


_governor: _Governor | None = None


def choose_threads(threads: int | None = None) -> int:
    """Set torch's intra-op threads: `threads` if given, else $DDIM_THREADS, else torch's own
    choice under OMP_NUM_THREADS, else `usable_cpus()`, which `adjust_threads()` then follows
    to the CPUs other processes leave (only then, and not under a cgroup quota, which is this
    process's share already); returns the count."""
    import torch

    global _governor
    _governor = None
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
        cpus = _affinity()
        if threads == len(cpus):  # no quota below the affinity mask
            _governor = _Governor(cpus)
    torch.set_num_threads(threads)
    return threads


def adjust_threads() -> None:
    """Follow the load (see `choose_threads`); cheap enough to call once per training step or
    sampling batch, and a no-op unless `choose_threads()` chose the count itself."""
    if _governor is not None:
        _governor()
