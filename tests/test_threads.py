"""How `train` sets OpenMP's threads: a bounded spin, and the cores other processes leave free."""

import os
import subprocess
import sys
import time

import pytest

from mnist_digits import threads


def _stat(*cpus: tuple[int, int]) -> str:
    """/proc/stat text for CPUs with (busy, idle) ticks: busy split over user and system."""
    total_busy, total_idle = sum(b for b, _ in cpus), sum(i for _, i in cpus)
    lines = [f"cpu  {total_busy // 2} 0 {total_busy - total_busy // 2} {total_idle} 0 0 0 0 0 0"]
    for n, (busy, idle) in enumerate(cpus):
        lines.append(f"cpu{n} {busy // 2} 0 {busy - busy // 2} {idle} 0 0 0 0 0 0")
    return "\n".join([*lines, "intr 1 2 3", "ctxt 99"]) + "\n"


def test_busy_cores_counts_each_usable_cpus_busy_share():
    before = _stat((0, 0), (0, 0), (0, 0))
    after = _stat((100, 0), (25, 75), (100, 0))
    assert threads.busy_cores(before, after, {0, 1, 2}) == pytest.approx(2.25)
    assert threads.busy_cores(before, after, {1}) == pytest.approx(0.25)  # only the CPUs it may use
    assert threads.busy_cores(before, after, {7}) == 0.0


def _choose(env: dict[str, str], busy: float, monkeypatch, cores: int = 2) -> threads.ThreadChoice:
    monkeypatch.setattr(threads, "usable_cpus", lambda: set(range(cores)))
    shares = [min(1.0, max(0.0, busy - n)) for n in range(cores)]
    after = _stat(*[(round(100 * s), round(100 * (1 - s))) for s in shares])
    readings = iter([_stat(*[(0, 0)] * cores), after])
    return threads.choose_for_training(env, read_stat=lambda: next(readings), sleep=lambda _: None)


CASES = [
    (0.0, 2, None),
    (0.3, 2, None),
    (0.7, 2, "1"),
    (1.0, 2, "1"),
    (2.0, 2, "1"),
    (1.0, 8, "7"),
    (2.7, 8, "5"),
]


@pytest.mark.parametrize(("busy", "cores", "expected"), CASES)
def test_training_runs_on_the_cores_other_processes_leave(busy, cores, expected, monkeypatch):
    env: dict[str, str] = {}
    choice = _choose(env, busy, monkeypatch, cores)
    assert env.get("OMP_NUM_THREADS") == expected
    assert env["GOMP_SPINCOUNT"] == str(threads.SPIN_COUNT)
    line = choice.describe()
    assert (line is None) == (expected is None)
    if line:
        assert f"{busy:.1f} of this machine's {cores} cores" in line and f"on {expected} thread" in line


def test_what_the_user_set_is_left_alone(monkeypatch):
    env = {"OMP_NUM_THREADS": "2", "OMP_WAIT_POLICY": "ACTIVE"}
    choice = _choose(env, 2.0, monkeypatch)
    assert env == {"OMP_NUM_THREADS": "2", "OMP_WAIT_POLICY": "ACTIVE"} and choice.describe() is None
    env = {"GOMP_SPINCOUNT": "5"}
    _choose(env, 0.0, monkeypatch)
    assert env == {"GOMP_SPINCOUNT": "5"}


def test_an_unreadable_or_odd_proc_stat_leaves_the_threads_alone(monkeypatch):
    monkeypatch.setattr(threads, "usable_cpus", lambda: {0, 1})
    for readings in ([None], ["cpu0 garbage here\n", "cpu0 1 2\n"]):
        env: dict[str, str] = {}
        it = iter(readings)
        choice = threads.choose_for_training(
            env, read_stat=lambda it=it: next(it, None), sleep=lambda s: None
        )
        assert "OMP_NUM_THREADS" not in env and choice.describe() is None


@pytest.mark.skipif(
    not os.path.exists("/proc/stat") or len(os.sched_getaffinity(0)) < 2, reason="needs Linux and two cores"
)
def test_a_process_spinning_on_one_core_leaves_training_the_others():
    cpu = min(os.sched_getaffinity(0))
    code = f"import os\nos.sched_setaffinity(0, {{{cpu}}})\nwhile True:\n    pass\n"
    spinner = subprocess.Popen([sys.executable, "-c", code])
    try:
        time.sleep(0.5)  # started and spinning
        env: dict[str, str] = {}
        choice = threads.choose_for_training(env)
    finally:
        spinner.kill()
        spinner.wait()
    assert choice.busy >= threads.BUSY_SHARE
    assert 1 <= int(env["OMP_NUM_THREADS"]) < choice.cores
