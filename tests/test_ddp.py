"""Two-process DDP on the CPU (gloo) under `accelerate launch`, against one process with the same global
batch, whole or cut into micro-batches. The job is tests/scripts/sft_job.py.

On a machine without GPUs, `accelerate launch --cpu` starts a single process (several need mpirun), so
the processes come from `--multi_gpu` (torch.distributed.run), and ACCELERATE_USE_CPU=1 tells the trainer
to run them on the CPU with gloo.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from training.artifacts import read_json
from training.model import load_model

SCRIPT = Path(__file__).parent / "scripts" / "sft_job.py"
EXAMPLES, PER_DEVICE, SAVE_EVERY = 64, 4, 4


@pytest.mark.parametrize("micro", [(), ("--micro-batches", "2")], ids=["batches", "micro-batches"])
def test_two_processes_train_like_one_with_the_same_global_batch(tmp_path, micro):
    ddp, single = tmp_path / "ddp", tmp_path / "single"
    # A fresh HF_HOME, so that no user accelerate config applies; port 0 makes accelerate pick a free one.
    env = {**os.environ, "OMP_NUM_THREADS": "1", "ACCELERATE_USE_CPU": "1", "HF_HOME": str(tmp_path / "hf")}
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
              "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
              "--main_process_port", "0"]
    job = ["--examples", str(EXAMPLES), "--batch-size", str(PER_DEVICE), *micro]
    subprocess.run([*launch, str(SCRIPT), str(ddp), *job, "--checkpoint-dir", str(ddp / "checkpoints"),
                    "--save-every", str(SAVE_EVERY)], env=env, check=True, timeout=300, capture_output=True)
    subprocess.run([sys.executable, str(SCRIPT), str(single), "--examples", str(EXAMPLES),
                    "--batch-size", str(2 * PER_DEVICE), *micro],
                   env={**os.environ, "OMP_NUM_THREADS": "1"}, check=True, timeout=300, capture_output=True)

    metrics = read_json(ddp / "metrics.json")
    steps = EXAMPLES // (2 * PER_DEVICE)  # each step takes one batch per process: half the steps of one
    assert metrics["world_size"] == 2 and metrics["global_step"] == steps
    assert read_json(single / "metrics.json")["global_step"] == steps

    # Both ranks hold the same trained model; only rank 0 counts as the main process and saved it.
    ranks = {path.stem: read_json(path) for path in (ddp / "ranks").glob("*.json")}
    assert {rank: r["is_main_process"] for rank, r in ranks.items()} == {"0": True, "1": False}
    assert ranks["1"]["final_loss"] == ranks["0"]["final_loss"] == metrics["final_loss"]
    assert ranks["1"]["generations"] == ranks["0"]["generations"] == metrics["generations"]
    assert sorted(p.name for p in ddp.iterdir()) == ["checkpoints", "metrics.json", "model", "ranks"]

    model, tokenizer = load_model(ddp / "model")
    ids = torch.tensor([tokenizer("\n\nHuman: What is 2 plus 2?\n\nAssistant:")["input_ids"]])
    assert model(ids).logits.isfinite().all()
    # Averaged over both ranks' tokens, the gradient is the one-process gradient on the same batch.
    weights = [load_file(run / "model" / "model.safetensors") for run in (ddp, single)]
    assert weights[0].keys() == weights[1].keys()
    assert all(torch.allclose(weights[0][k], weights[1][k], rtol=0, atol=1e-5) for k in weights[0])

    # Each rank checkpointed its own RNG state next to the shared weights.
    last = ddp / "checkpoints" / f"checkpoint-{steps}"
    assert {"model.safetensors", "rng_state_0.pth", "rng_state_1.pth"} <= {p.name for p in last.iterdir()}
