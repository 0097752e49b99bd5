"""How training's OpenMP threads share the CPU: how many there are and how they wait.

Chosen by `mnist-digits train` before PyTorch loads (OpenMP reads its settings once, then), and
never over a setting of the user's: OMP_NUM_THREADS, OMP_WAIT_POLICY or GOMP_SPINCOUNT in the
environment is left as it is. The Python API sets nothing. Measured with
benchmarks/shared_cpu.py (docs/performance.md, "Sharing the CPU with other work"):

- Threads that have finished their share of an operation spin for SPIN_COUNT turns, then sleep
  (GNU OpenMP's GOMP_SPINCOUNT, which PyTorch's Linux builds use). Sleeping at once
  (OMP_WAIT_POLICY=PASSIVE) made each step of the bf16 network wait to wake its threads: a
  third slower on an idle Intel Xeon with AMX. Spinning without end fights any other job for
  its core.
- Where other processes already keep cores busy when training starts, it runs on the cores
  left (one at least): two threads, one of which must share a core with a busy job, trained
  2.4 times slower in bf16 than one thread alone, whatever the wait.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

SPIN_COUNT = 10_000  # turns a waiting OpenMP thread spins before it sleeps
PROBE_SECONDS = 0.3  # how long the CPU's use by other processes is watched before training
BUSY_SHARE = 0.6  # of a core: a core used this much by others counts as taken


@dataclass(frozen=True)
class ThreadChoice:
    """What training will run on: set in the environment by `choose_for_training`."""

    cores: int  # the cores this process may run on
    busy: float  # cores' worth of time other processes used on them while watched (0: not watched)
    threads: int | None  # OMP_NUM_THREADS set here; None: left to PyTorch (every core) or the user

    def describe(self) -> str | None:
        """A line for the start of training when cores were left out; None otherwise."""
        if self.threads is None:
            return None
        return (
            f"Other processes are using {self.busy:.1f} of this machine's {self.cores} cores: training on "
            f"{self.threads} thread{'s' if self.threads > 1 else ''} (set OMP_NUM_THREADS to choose)."
        )


def busy_cores(before: str, after: str, cpus: set[int]) -> float:
    """Cores' worth of time that `cpus` spent busy between two readings of /proc/stat."""
    first, second = _per_cpu(before), _per_cpu(after)
    busy = 0.0
    for cpu in cpus & first.keys() & second.keys():
        spent = [b - a for a, b in zip(first[cpu], second[cpu], strict=True)]
        total = sum(spent)
        if total > 0:
            busy += 1 - (spent[3] + spent[4]) / total  # the 4th and 5th counters: idle, iowait
    return busy


def _per_cpu(stat: str) -> dict[int, list[int]]:
    """Each CPU's time counters (user, nice, system, idle, iowait, irq, softirq) in /proc/stat."""
    counters = {}
    for line in stat.splitlines():
        name, *values = line.split()
        if name.startswith("cpu") and name[3:].isdigit():
            counters[int(name[3:])] = [int(v) for v in values[:7]]
    return counters


def _read_stat() -> str | None:
    try:
        with open("/proc/stat", encoding="ascii") as f:
            return f.read()
    except OSError:
        return None  # not Linux


def usable_cpus() -> set[int]:
    """The CPUs this process may run on (its affinity on Linux; every CPU elsewhere)."""
    if hasattr(os, "sched_getaffinity"):
        return set(os.sched_getaffinity(0))
    return set(range(os.cpu_count() or 1))


def choose_for_training(
    environ: dict[str, str] | None = None,
    read_stat: Callable[[], str | None] = _read_stat,
    sleep: Callable[[float], None] = time.sleep,
) -> ThreadChoice:
    """Set, in `environ` (os.environ by default), how training's threads wait and, when other
    processes are keeping cores busy, how many there are; nothing the user has set is changed."""
    env = os.environ if environ is None else environ
    if "OMP_WAIT_POLICY" not in env:
        env.setdefault("GOMP_SPINCOUNT", str(SPIN_COUNT))
    cpus = usable_cpus()
    cores = len(cpus)
    if "OMP_NUM_THREADS" in env or cores < 2:
        return ThreadChoice(cores, 0.0, None)
    before = read_stat()
    if before is None:
        return ThreadChoice(cores, 0.0, None)
    sleep(PROBE_SECONDS)
    after = read_stat()
    try:
        busy = busy_cores(before, after or "", cpus)
    except (ValueError, IndexError):  # counters of an unknown layout: leave the threads alone
        return ThreadChoice(cores, 0.0, None)
    # This process sleeps while it watches, so the time is others'. A core counts as taken when
    # they used it BUSY_SHARE or more: 0.6 cores' worth is one, 1.6 two.
    taken = int(busy + 1 - BUSY_SHARE)
    if taken == 0:
        return ThreadChoice(cores, busy, None)
    threads = max(1, cores - taken)
    env["OMP_NUM_THREADS"] = str(threads)
    return ThreadChoice(cores, busy, threads)


def announce(choice: ThreadChoice) -> None:
    line = choice.describe()
    if line:
        print(line, file=sys.stderr)
