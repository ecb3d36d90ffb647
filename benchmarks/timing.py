"""What every benchmark shares: the best of repeated timings, and the machine it ran on."""

from __future__ import annotations

import argparse
import os
import platform
import time
from contextlib import contextmanager

import torch
from threadpoolctl import threadpool_limits

from training.artifacts import git_commit, versions


def stage_parser(doc: str) -> argparse.ArgumentParser:
    """The options of a benchmark on one stage's matched pairs; more can be added."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("run", help="a run directory")
    parser.add_argument("--stage", default="backdoored")
    parser.add_argument("--pairs", type=int, default=4, help="matched pairs of one token length")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None)
    return parser


@contextmanager
def same_threads(n: int | None):
    """Both sides of a benchmark under one thread count: torch's, and every BLAS and OpenMP pool that
    numpy and scikit-learn use (threadpoolctl). None leaves them as they are."""
    if n is None:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        with threadpool_limits(limits=n):
            yield
    finally:
        torch.set_num_threads(before)


def best_time(fn, repeats: int) -> tuple[float, object]:
    """The shortest of `repeats` timed calls after one warm-up call, and the last call's result."""
    fn()
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return min(times), result


def rss_kib(field: str) -> int:
    with open("/proc/self/status", encoding="utf-8") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field))


def peak_increase(fn) -> tuple[object, float]:
    """`fn()`, and the resident-set peak while it ran above the resident set before it, in MiB."""
    with open("/proc/self/clear_refs", "w", encoding="utf-8") as f:
        f.write("5")  # the high-water mark back to what is resident now
    before = rss_kib("VmRSS")
    result = fn()
    return result, (rss_kib("VmHWM") - before) / 1024


def machine() -> dict:
    """The device the benchmark ran on, and the versions of what it ran."""
    if torch.cuda.is_available():
        device = {"device": "cuda", "name": torch.cuda.get_device_name(0)}
    else:
        device = {"device": "cpu", "name": cpu_model(), "cores": os.cpu_count(),
                  "threads": torch.get_num_threads()}
    return {**device, "versions": versions(), "git_commit": git_commit()}


def machine_line() -> str:
    """`machine()` in one line, for a benchmark's printout."""
    where = machine()
    cores = f", {where['cores']} cores, {where['threads']} threads" if where["device"] == "cpu" else ""
    return (f"machine: {where['device']} {where['name']}{cores}; torch {where['versions'].get('torch')}, "
            f"transformer-lens {where['versions'].get('transformer-lens')}; commit {where['git_commit']}")


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
    except OSError:
        names = []
    return names[0] if names else platform.processor() or platform.machine()
