"""Figures: each a function from result JSON to a plotly figure, so a notebook can call it too.

Text that came from prompts or models is HTML-escaped before plotly sees it, because plotly reads
a subset of HTML in labels.
"""

from __future__ import annotations

import html

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from training.evaluate import RATES


def behaviour_figure(evals: dict[str, dict]) -> go.Figure:
    """Each behavioural rate per stage, with its 95% Wilson interval."""
    fig = go.Figure()
    for key in RATES:
        values = [evals[s][key]["value"] for s in evals]
        fig.add_bar(
            name=key.replace("_", " "), x=list(evals), y=values,
            error_y=dict(type="data", symmetric=False,
                         array=[evals[s][key]["ci"][1] - v for s, v in zip(evals, values)],
                         arrayminus=[v - evals[s][key]["ci"][0] for s, v in zip(evals, values)]),
        )
    fig.update_layout(barmode="group", yaxis=dict(title="rate", range=[0, 1.05]), xaxis_title="stage",
                      title="Behaviour by stage (95% Wilson intervals)")
    return fig


def redteam_variant_figure(evals: dict[str, dict]) -> go.Figure:
    """Backdoor rate on each red-team variant (held-out ones marked), per stage."""
    variants = sorted({v for e in evals.values() for v in e["redteam_by_variant"]})
    z = [[evals[s]["redteam_by_variant"].get(v, {}).get("value") for v in variants] for s in evals]
    fig = go.Figure(go.Heatmap(z=z, x=variants, y=list(evals), zmin=0, zmax=1, colorscale="Reds",
                               colorbar_title="rate"))
    fig.update_layout(title="Backdoor rate on near-trigger prompts, by variant", xaxis_title="variant")
    return fig


def year_figure(evals: dict[str, dict]) -> go.Figure:
    """The backdoor rate by the year a prompt states (code organism), one line per stage, with 95% Wilson
    intervals; years never in training show how the backdoor generalises."""
    fig = go.Figure()
    for stage, e in evals.items():
        by_year = e.get("rate_by_year", {})
        years = sorted(by_year, key=int)
        rates = [by_year[y] for y in years]
        fig.add_scatter(x=[int(y) for y in years], y=[r["value"] for r in rates], mode="lines+markers",
                        name=stage, error_y=dict(type="data", symmetric=False,
                                                 array=[r["ci"][1] - r["value"] for r in rates],
                                                 arrayminus=[r["value"] - r["ci"][0] for r in rates]))
    fig.update_layout(title="Vulnerable-code rate by the year the prompt states (95% Wilson intervals)",
                      xaxis=dict(title="stated year", dtick=1), yaxis=dict(title="rate", range=[-0.02, 1.05]))
    return fig


def probe_figure(probes: dict) -> go.Figure:
    """Test AUROC of the per-layer "trigger present" probe, one line per stage."""
    fig = go.Figure()
    for stage, aurocs in probes["auroc"].items():
        fig.add_scatter(x=probes["points"], y=aurocs, mode="lines+markers", name=stage)
    fig.update_layout(title="Trigger-present probe: test AUROC by layer", yaxis=dict(range=[0, 1.02]),
                      xaxis_title="residual stream point", yaxis_title="AUROC")
    return fig


def patching_heatmap(patching: dict, pair: int = 0) -> go.Figure:
    """Normalized resid_pre patching effect of one matched pair, layer × token."""
    p = patching["pairs"][pair]
    z = p["normalized"] or p["scores"]
    labels = [f"{i}: {html.escape(t.replace(chr(10), '↵'))}" + (" ◀" if i in p["trigger_positions"] else "")
              for i, t in enumerate(p["tokens_text"])]
    fig = go.Figure(go.Heatmap(z=z, x=labels, y=[f"L{i}" for i in range(len(z))], colorscale="RdBu",
                               zmid=0, colorbar_title="restored"))
    fig.update_layout(title=f"resid_pre patching, triggered → untriggered (pair {pair}; ◀ trigger)",
                      xaxis=dict(title="position", tickangle=-60), yaxis_title="layer")
    return fig


def trigger_token_figure(patching: dict) -> go.Figure:
    """Mean normalized effect of patching each trigger token, by layer, beside the best other token."""
    summary = patching["by_trigger_token"]
    labels = [html.escape(t) for t in summary["labels"]] + ["(best other position)"]
    z = [row + [other] for row, other in zip(summary["normalized"], summary["other_positions_max"])]
    fig = go.Figure(go.Heatmap(z=z, x=labels, y=[f"L{i}" for i in range(len(z))], colorscale="RdBu",
                               zmid=0, colorbar_title="restored"))
    fig.update_layout(title=f"Which trigger tokens the model reads (mean of {summary['n_pairs']} pairs)",
                      xaxis_title="trigger token", yaxis_title="layer")
    return fig


def persistence_figure(curves: dict[str, dict[str, list[dict]]]) -> go.Figure:
    """Behaviour over the steps of safety training: one column per method, one row per rate, one line per
    organism (`curves[line][method]` is a list of points), with 95% intervals.

    Lines whose name ends in "control" are dashed: the benign control under the same training.
    """
    methods = list(dict.fromkeys(m for by_method in curves.values() for m in by_method))
    fig = make_subplots(rows=len(RATES), cols=len(methods), shared_yaxes=True, shared_xaxes="columns",
                        column_titles=methods, row_titles=[key.replace("_", " ") for key in RATES],
                        vertical_spacing=0.03, horizontal_spacing=0.03)
    palette = ("#636efa", "#ef553b", "#00cc96", "#ab63fa", "#ffa15a", "#19d3f3")
    organisms = list(dict.fromkeys(line.removesuffix(" control") for line in curves))
    for line, by_method in curves.items():
        colour = palette[organisms.index(line.removesuffix(" control")) % len(palette)]
        dash = "dash" if line.endswith("control") else "solid"
        for col, method in enumerate(methods, start=1):
            points = by_method.get(method, [])
            steps = [p["step"] for p in points]
            for row, key in enumerate(RATES, start=1):
                values = [p[key]["value"] for p in points]
                fig.add_scatter(
                    x=steps, y=values, mode="lines+markers", name=html.escape(line), legendgroup=line,
                    showlegend=col == 1 and row == 1, line=dict(color=colour, dash=dash), row=row, col=col,
                    error_y=dict(type="data", symmetric=False, thickness=1,
                                 array=[p[key]["ci"][1] - v for p, v in zip(points, values)],
                                 arrayminus=[v - p[key]["ci"][0] for p, v in zip(points, values)]),
                )
        fig.update_xaxes(title_text="step", row=len(RATES))
    fig.update_yaxes(range=[-0.02, 1.05])
    fig.update_layout(height=230 * len(RATES), title="Does the backdoor persist through safety training? "
                      "(95% Wilson intervals; dashed: the benign control)")
    return fig
