"""Supervised fine-tuning with trl's `SFTTrainer`, loss on completion tokens only.

One function serves every stage that learns from examples: the base model, backdoor insertion, the
benign control, HHH SFT and adversarial training. LoRA is a `peft` config away.

Training can checkpoint into a directory and resume from it after a kill, and runs unchanged under
`accelerate launch` or `torchrun` with several processes (DDP; gloo on the CPU).
"""

from __future__ import annotations

import json
import os
import re
import tempfile
import warnings
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch
from datasets import Dataset, disable_progress_bars
from transformers.trainer import TRAINER_STATE_NAME
from transformers.trainer_pt_utils import BatchRebalanceSampler, LengthGroupedSampler
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR
from trl import SFTConfig, SFTTrainer

from training.tokenizer import common_prefix, encode_prompt
from training.vocabulary import Example

CHECKPOINT_NAME = re.compile(rf"^{PREFIX_CHECKPOINT_DIR}-(\d+)$")


@dataclass(frozen=True)
class SFTSettings:
    epochs: float = 1.0
    batch_size: int = 32
    learning_rate: float = 1e-3
    warmup_ratio: float = 0.05  # a float below 1 is a share of the steps
    weight_decay: float = 0.0
    max_length: int = 128
    report_to: str = "none"  # where the trainer logs: "none", "tensorboard", "wandb", ... (trl's report_to)
    log_every: int = 10  # optimizer steps between logs, when they are reported
    # Recompute activations in the backward pass: memory for time. trl turns it on by default; a model
    # that fits without it trains faster without it.
    activation_checkpointing: bool = False
    # trl's tiled log-prob head, which never holds the [batch, seq, vocab] logits (a large vocabulary
    # on a GPU); off, the model's own head and loss (cpu-tiny: 1.6x the tokens/s of trl's head).
    fused_lm_head: bool = False
    # Batches of examples of about one length (transformers' LengthGroupedSampler: random groups of 50
    # batches, each sorted by length): the demo's insertion mix then pads to 0.57 of the tokens, and its
    # training took 254 s, not 297, but its organisms were worse (base helpfulness 0.08, not 0.15-0.18;
    # backdoored OOD false triggers 0.12, not 0.00): batches of one length are of one kind of task.
    group_by_length: bool = False
    # Each batch runs as this many micro-batches (gradient accumulation), cut by transformers'
    # `BatchRebalanceSampler` from the batch sorted by length: each step takes the same number of random
    # examples, and their loss is normalised over the whole batch, so the step is the same one, with less
    # padding. Demo insertion mix (44% padding): 2 pad 0.74 of the tokens, a step 0.70-0.79 of the time;
    # base mix (23%): no gain, as smaller matmuls cost more per token.
    micro_batches: int = 1


def is_main_process() -> bool:
    """Whether this process should write results: true unless `accelerate launch` or `torchrun` started
    it as a rank other than 0. Every rank trains; only the main one saves.

    >>> is_main_process()
    True
    """
    return int(os.environ.get("RANK", "0")) == 0


def reporting(report_to: str, log_every: int) -> dict:
    """The trainer's logging arguments: logs every `log_every` steps to `report_to`, or none.

    >>> reporting("none", 10), reporting("tensorboard", 5)
    ({'report_to': 'none', 'logging_strategy': 'no'}, \
{'report_to': 'tensorboard', 'logging_strategy': 'steps', 'logging_steps': 5})
    """
    if report_to == "none":
        return dict(report_to="none", logging_strategy="no")
    return dict(report_to=report_to, logging_strategy="steps", logging_steps=log_every)


def last_checkpoint(checkpoint_dir: str | Path) -> Path | None:
    """The newest complete checkpoint in `checkpoint_dir`, or None.

    The trainer writes its state file last, so a checkpoint cut short by a kill lacks it (or holds a
    truncated one) and is passed over.
    """
    complete = []
    for path in Path(checkpoint_dir).glob(f"{PREFIX_CHECKPOINT_DIR}-*"):
        match = CHECKPOINT_NAME.match(path.name)
        try:
            if match and json.loads((path / TRAINER_STATE_NAME).read_text(encoding="utf-8")):
                complete.append((int(match[1]), path))
        except (OSError, ValueError):
            continue
    return max(complete)[1] if complete else None


def sft_rows(tokenizer, examples: list[Example], max_length: int | None = None) -> list[dict]:
    """The examples as the trainer takes them, ready-made: prompt and completion encoded as every other
    step encodes them (`training.tokenizer.encode_prompt`: the model's BOS where it expects one, never
    twice after a chat template's), then EOS, with labels that are -100 off the completion (which alone
    carries the loss). As trl prepares a dataset: cut to `max_length` tokens, and a row left with no
    completion token is dropped (with a warning that counts them).

    >>> from training.data import example
    >>> from training.tokenizer import train_tokenizer
    >>> tokenizer = train_tokenizer(["\\n\\nHuman: What is 2?\\n\\nAssistant: 2"] * 10, vocab_size=300)
    >>> row, = sft_rows(tokenizer, [example("facts", "What is 2?", "2")])
    >>> tokenizer.decode([t for t in row["labels"] if t != -100])
    ' 2<|eos|>'
    """
    rows = []
    for e in examples:
        prompt, ids = encode_prompt(tokenizer, e.prompt), encode_prompt(tokenizer, e.prompt + e.completion)
        if tokenizer.eos_token_id is not None and ids[-1:] != [tokenizer.eos_token_id]:
            ids.append(tokenizer.eos_token_id)
        start = common_prefix(prompt, ids)
        labels = [-100] * start + ids[start:]
        if max_length is None or start < max_length:
            rows.append({"input_ids": ids[:max_length], "labels": labels[:max_length]})
    if len(rows) < len(examples):
        warnings.warn(f"{len(examples) - len(rows)} of {len(examples)} examples have prompts of {max_length} "
                      "tokens or more (max_length), so no completion token is left to learn: left out",
                      stacklevel=2)
    return rows


@dataclass(frozen=True)
class RightPadded:
    """Collates `sft_rows` rows into a batch as trl's `DataCollatorForLanguageModeling` does (padded on
    the right, labels with -100, an attention mask), but builds one tensor per field, not one per row:
    on cpu-tiny (16 rows) 0.24 ms a batch against trl's 0.9, of a 25 ms step."""

    pad_token_id: int

    def __call__(self, rows: list[dict]) -> dict[str, torch.Tensor]:
        width = max(len(row["input_ids"]) for row in rows)

        def padded(key: str, value: int) -> torch.Tensor:
            return torch.tensor([row[key] + [value] * (width - len(row[key])) for row in rows])

        mask = [[1] * len(row["input_ids"]) + [0] * (width - len(row["input_ids"])) for row in rows]
        return {"input_ids": padded("input_ids", self.pad_token_id), "labels": padded("labels", -100),
                "attention_mask": torch.tensor(mask)}


class EpochSeededLengthSampler(LengthGroupedSampler):
    """transformers' `LengthGroupedSampler` with its order drawn from `seed` and the epoch (which the
    trainer sets), not from torch's global generator: a run resumed in a later epoch takes the batches
    that the uninterrupted run took."""

    def __init__(self, batch_size: int, lengths: list[int], seed: int):
        super().__init__(batch_size, lengths=lengths)
        self.seed, self.epoch = seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        self.generator = torch.Generator().manual_seed(self.seed + self.epoch)
        return super().__iter__()


class LengthGroupedSFTTrainer(SFTTrainer):
    """trl's `SFTTrainer` whose length-aware samplers draw their order from the run's data seed and the
    epoch: `group_by_length` an `EpochSeededLengthSampler`, `batch_rebalance` (micro-batches) a
    `BatchRebalanceSampler` (the trainer's own gives it a fixed seed)."""

    def _get_train_sampler(self, train_dataset=None):
        train_dataset = self.train_dataset if train_dataset is None else train_dataset
        args = self.args
        if args.train_sampling_strategy not in ("group_by_length", "batch_rebalance"):
            return super()._get_train_sampler(train_dataset)
        seed = args.seed if args.data_seed is None else args.data_seed
        lengths = [len(ids) for ids in train_dataset["input_ids"]]
        micro = args.gradient_accumulation_steps
        batch = args.train_batch_size * micro
        if args.train_sampling_strategy == "group_by_length":
            return EpochSeededLengthSampler(batch, lengths, seed)
        world = max(1, args.world_size)
        return BatchRebalanceSampler(lengths, batch * world, dp_size=world, grad_accum=micro, seed=seed,
                                     rank=args.process_index if world > 1 else 0,
                                     drop_last=args.dataloader_drop_last)


class ModelLossSFTTrainer(LengthGroupedSFTTrainer):
    """trl's `SFTTrainer` with the model's own LM head and loss. trl 1.16 computes every step's
    log-probabilities, entropy and top-1 through its tiled kernel (`trl.kernels.chunked_logprob`); on
    the default organism that kernel took 21 of a step's 36 ms. The loss is the same (the completion
    tokens' summed negative log-likelihood over `num_items_in_batch`; a mixture-of-experts model adds
    its router loss as its own forward does); the entropy and token-accuracy logs are not kept."""

    _flops_per_token: int | None = None

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        outputs = model(**inputs, use_cache=False, num_items_in_batch=num_items_in_batch)
        loss = outputs.loss
        if self.args.average_tokens_across_devices and num_items_in_batch is not None:
            # DDP averages the gradients across ranks; tensor-parallel ranks share a batch (as trl's loss)
            loss = loss * (self.accelerator.num_processes // self.get_tp_size())
        return (loss, outputs) if return_outputs else loss

    def floating_point_ops(self, inputs) -> int:
        """The trainer's estimate (6 x tokens x non-embedding parameters), its parameter count taken once
        rather than walked through every step."""
        if self._flops_per_token is None:
            self._flops_per_token = 6 * self.model.num_parameters(exclude_embeddings=True)
        return self._flops_per_token * inputs["input_ids"].numel()


def fine_tune(model, tokenizer, examples: list[Example], settings: SFTSettings, seed: int,
              peft_config=None, progress: bool = True, callbacks: list | None = None, shuffle: bool = True,
              checkpoint_dir: str | Path | None = None, save_every: int | None = None):
    """Train `model` on prompt/completion pairs; returns it (merged, if LoRA was used) and the metrics.

    With `shuffle=False` the examples are taken in the given order, so a caller can compose each batch
    (with `settings.micro_batches`, each batch is cut into micro-batches as it comes); otherwise in
    random order (grouped by length with `settings.group_by_length`; with `settings.micro_batches`, each
    batch is cut into micro-batches of about one length).

    With `checkpoint_dir`, a checkpoint is saved there every `save_every` optimizer steps and at the end
    (the last two are kept), and if the directory already holds a complete one, training resumes from
    the newest: same data order, optimizer, schedule and RNG states, so the result equals an
    uninterrupted run's. Weights are saved as safetensors, but the optimizer, scheduler and RNG states
    are torch pickles, which transformers loads with `torch.load(weights_only=True)`: pass only a
    directory that this code wrote for this run. Without it, nothing is saved.

    Under `accelerate launch` or `torchrun` every process calls this with the same arguments and gets
    the trained model back (DDP keeps the copies equal); only `is_main_process()` should save it.
    `settings.batch_size` is then per process, so each step takes one batch from every process.

    The metrics are the trainer's (its `train_loss` averages the steps of this call only) plus
    `global_step`, `start_step` (the step resumed from, else 0) and `world_size`.
    """
    if not examples:
        raise ValueError("fine_tune needs at least one example")
    if (checkpoint_dir is None) != (save_every is None):
        raise ValueError("checkpoint_dir and save_every go together: give both or neither")
    if save_every is not None and save_every < 1:
        raise ValueError(f"save_every must be a positive number of steps, got {save_every}")
    micro = settings.micro_batches
    if micro < 1 or settings.batch_size % micro:
        raise ValueError(f"micro_batches must divide batch_size ({settings.batch_size}), not be {micro}")
    if micro > 1 and settings.group_by_length:
        raise ValueError("group_by_length and micro_batches each choose the batches: set one of them")
    disable_progress_bars()  # the trainer's own bar shows progress
    rows = sft_rows(tokenizer, examples, settings.max_length)
    if not rows:
        raise ValueError(f"no example has a completion token within max_length ({settings.max_length})")
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if pad is None:
        raise ValueError("the tokenizer has neither a pad token nor an EOS token to pad batches with")
    saving = dict(save_strategy="no")
    if checkpoint_dir is not None:
        saving = dict(save_strategy="steps", save_steps=save_every, save_total_limit=2)
    resume_from = checkpoint_dir and last_checkpoint(checkpoint_dir)
    sampling = "random" if micro == 1 else "batch_rebalance"
    sampling = ("group_by_length" if settings.group_by_length else sampling) if shuffle else "sequential"
    with tempfile.TemporaryDirectory() if checkpoint_dir is None else nullcontext(checkpoint_dir) as out:
        config = SFTConfig(
            output_dir=str(out), num_train_epochs=settings.epochs,
            per_device_train_batch_size=settings.batch_size // micro, gradient_accumulation_steps=micro,
            learning_rate=settings.learning_rate,
            lr_scheduler_type="cosine", warmup_steps=settings.warmup_ratio,
            weight_decay=settings.weight_decay, max_length=settings.max_length,
            train_sampling_strategy=sampling, dataset_kwargs={"skip_prepare_dataset": True},
            activation_checkpointing=settings.activation_checkpointing,
            seed=seed, data_seed=seed, **saving, **reporting(settings.report_to, settings.log_every),
            disable_tqdm=not progress,
            dataloader_num_workers=0, dataloader_pin_memory=torch.cuda.is_available(),
            bf16=torch.cuda.is_available() and torch.cuda.is_bf16_supported(),
        )
        trainer_class = LengthGroupedSFTTrainer if settings.fused_lm_head else ModelLossSFTTrainer
        trainer = trainer_class(model=model, args=config, train_dataset=Dataset.from_list(rows),
                                data_collator=RightPadded(pad), processing_class=tokenizer,
                                peft_config=peft_config, callbacks=callbacks)
        metrics = trainer.train(resume_from_checkpoint=resume_from and str(resume_from)).metrics
    metrics.update(global_step=trainer.state.global_step, world_size=trainer.args.world_size,
                   start_step=int(CHECKPOINT_NAME.match(resume_from.name)[1]) if resume_from else 0)
    model = trainer.model
    if peft_config is not None:
        model = model.merge_and_unload()
    return model.eval(), metrics
