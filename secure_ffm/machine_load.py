"""How many of the machine's cores other processes keep busy, measured over this process's own start-up.

``run.workers = 0`` trains a round's clients in parallel processes when the cores are there to run them
(:func:`secure_ffm.run.simulation.resolve_workers`). On a shared machine they may not be: with another job holding one
of this project's two cores, two training processes shared the one left and the large ``vs_flower.py`` case took
5.32 s against 4.89 s in one process (2026-12-06, docs/speed.md). The load average cannot say this at a run's start: it
lags by a minute, so a machine that was busy a minute ago and is idle now looks loaded.

Instead, the first import of ``secure_ffm`` takes a :class:`CpuSample` (the machine's busy CPU time from
``/proc/stat`` and this process's own, a few microseconds), and :func:`others_busy_cores` later divides the busy time
other processes added since by the wall time: the cores they used while this process imported torch, read its data
and built its model (about a second). Linux only; elsewhere, or over an interval too short to measure, it says None
and the caller keeps its choice.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

PROC_STAT = Path("/proc/stat")
MIN_INTERVAL_S = 0.2
"""Shortest interval :func:`others_busy_cores` measures over: ``/proc/stat`` counts in ticks of 10 ms."""
MAX_INTERVAL_S = 60.0
"""Longest: a process that imported ``secure_ffm`` long before its run (a notebook) would average an hour's load."""


@dataclass(frozen=True)
class CpuSample:
    """The machine's busy CPU seconds, this process's CPU seconds and the monotonic time, read together."""

    machine_busy_s: float
    own_s: float
    wall_s: float


def busy_seconds(stat_line: str, ticks_per_second: float) -> float:
    """Busy CPU seconds in the aggregate ``cpu`` line of ``/proc/stat``: every state but idle and iowait (user, nice,
    system, irq, softirq, steal; guest time is already counted in user)."""
    fields = stat_line.split()
    if not fields or fields[0] != "cpu" or len(fields) < 9:
        raise ValueError(f"not the aggregate cpu line of /proc/stat: {stat_line!r}")
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(v) for v in fields[1:9])
    return (user + nice + system + irq + softirq + steal) / ticks_per_second


def cpu_sample() -> CpuSample | None:
    """A sample now, or None where ``/proc/stat`` cannot be read (not Linux)."""
    try:
        with PROC_STAT.open(encoding="ascii") as stat:
            line = stat.readline()
        busy = busy_seconds(line, os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, AttributeError):
        return None
    times = os.times()
    return CpuSample(machine_busy_s=busy, own_s=times.user + times.system, wall_s=time.monotonic())


def others_between(first: CpuSample, last: CpuSample) -> float | None:
    """Cores other processes kept busy between two samples (this process's own CPU taken off), or None when the
    interval is shorter than :data:`MIN_INTERVAL_S` or longer than :data:`MAX_INTERVAL_S`."""
    wall = last.wall_s - first.wall_s
    if not MIN_INTERVAL_S <= wall <= MAX_INTERVAL_S:
        return None
    others = (last.machine_busy_s - first.machine_busy_s) - (last.own_s - first.own_s)
    return max(0.0, others / wall)


_BASELINE = cpu_sample()
"""Taken when ``secure_ffm`` is first imported (its ``__init__`` imports this module)."""


def others_busy_cores() -> float | None:
    """Cores other processes kept busy since ``secure_ffm`` was imported, or None (no ``/proc/stat``, or too soon)."""
    if _BASELINE is None:
        return None
    now = cpu_sample()
    return others_between(_BASELINE, now) if now is not None else None
