"""Supervised fine-tuning with trl's `SFTTrainer`, loss on completion tokens only.

One function serves every stage that learns from examples: the base model, backdoor insertion, the
benign control, HHH SFT and adversarial training. LoRA is a `peft` config away.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass

import torch
from datasets import Dataset, disable_progress_bars
from trl import SFTConfig, SFTTrainer

from training.vocabulary import Example


@dataclass(frozen=True)
class SFTSettings:
    epochs: float = 1.0
    batch_size: int = 32
    learning_rate: float = 1e-3
    warmup_ratio: float = 0.05  # a float below 1 is a share of the steps
    weight_decay: float = 0.0
    max_length: int = 128


def fine_tune(model, tokenizer, examples: list[Example], settings: SFTSettings, seed: int,
              peft_config=None, progress: bool = True, callbacks: list | None = None, shuffle: bool = True):
    """Train `model` on prompt/completion pairs; returns it (merged, if LoRA was used) and the metrics.

    With `shuffle=False` the examples are taken in the given order, so a caller can compose each batch.
    """
    if not examples:
        raise ValueError("fine_tune needs at least one example")
    disable_progress_bars()  # the trainer's own bar shows progress
    data = Dataset.from_list([{"prompt": e.prompt, "completion": e.completion} for e in examples])
    with tempfile.TemporaryDirectory() as scratch:
        config = SFTConfig(
            output_dir=scratch, num_train_epochs=settings.epochs,
            per_device_train_batch_size=settings.batch_size, learning_rate=settings.learning_rate,
            lr_scheduler_type="cosine", warmup_steps=settings.warmup_ratio,
            weight_decay=settings.weight_decay, max_length=settings.max_length,
            completion_only_loss=True, train_sampling_strategy="random" if shuffle else "sequential",
            seed=seed, data_seed=seed, report_to="none",
            save_strategy="no", logging_strategy="no", disable_tqdm=not progress,
            dataloader_num_workers=0, dataloader_pin_memory=torch.cuda.is_available(),
            bf16=torch.cuda.is_available() and torch.cuda.is_bf16_supported(),
        )
        trainer = SFTTrainer(model=model, args=config, train_dataset=data,
                             processing_class=tokenizer, peft_config=peft_config, callbacks=callbacks)
        metrics = trainer.train().metrics
    model = trainer.model
    if peft_config is not None:
        model = model.merge_and_unload()
    return model.eval(), metrics
