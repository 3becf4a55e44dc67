"""Who used the CPUs during a benchmark phase: CPU seconds per process group, from /proc via psutil.

Processes are grouped by what they are (the web workers, the Celery worker,
PostgreSQL, Redis, the load generator, the sink); whatever else ran on the
machine meanwhile (other people's tests) is "other", which tells how noisy a
figure is. Processes that start and end inside a phase are not seen.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Callable

import psutil

Classifier = Callable[[psutil.Process], str | None]


def _cpu(process: psutil.Process) -> float:
    times = process.cpu_times()
    return times.user + times.system


def snapshot(classify: Classifier) -> tuple[float, dict[int, tuple[str, float]]]:
    """The machine's busy CPU seconds so far, and each live process's group and CPU seconds."""
    machine = psutil.cpu_times()
    busy = sum(machine) - machine.idle - getattr(machine, "iowait", 0.0)
    processes: dict[int, tuple[str, float]] = {}
    for process in psutil.process_iter():
        try:
            group = classify(process) or _by_name(process)
            processes[process.pid] = (group, _cpu(process))
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return busy, processes


def _by_name(process: psutil.Process) -> str:
    name = process.name()
    if name.startswith("postgres"):
        return "postgresql (server processes, other databases)"
    if name == "redis-server":
        return "redis (the whole server)"
    if name == "wrk":
        return "load generator (wrk)"
    if process.pid == os.getpid():
        return "harness (and the Python load generator)"
    return "other processes"


def difference(
    before: tuple[float, dict], after: tuple[float, dict], seconds: float, per: int
) -> dict[str, object]:
    """CPU milliseconds per unit of work by group, and how busy the machine was (0..1 of all cores)."""
    busy_before, processes_before = before
    busy_after, processes_after = after
    used: Counter[str] = Counter()
    for pid, (group, cpu) in processes_after.items():
        start = processes_before.get(pid, (group, 0.0))[1] if pid in processes_before else 0.0
        used[group] += max(0.0, cpu - start)
    cores = psutil.cpu_count() or 1
    return {
        "cpu_ms_per_request": {group: round(1000 * cpu / per, 2) for group, cpu in used.most_common()},
        "machine_busy": round((busy_after - busy_before) / (seconds * cores), 3) if seconds > 0 else None,
    }
