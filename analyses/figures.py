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


def persistence_figure(curves: dict[str, list[dict]]) -> go.Figure:
    """Behaviour over the steps of each safety-training method: one panel per method, 95% intervals."""
    fig = make_subplots(rows=1, cols=len(curves), subplot_titles=list(curves), shared_yaxes=True)
    colours = dict(zip(RATES, ("#636efa", "#ef553b", "#00cc96", "#ab63fa", "#ffa15a")))
    for col, points in enumerate(curves.values(), start=1):
        steps = [p["step"] for p in points]
        for key in RATES:
            values = [p[key]["value"] for p in points]
            fig.add_scatter(
                x=steps, y=values, mode="lines+markers", name=key.replace("_", " "), row=1, col=col,
                line_color=colours[key], legendgroup=key, showlegend=col == 1,
                error_y=dict(type="data", symmetric=False,
                             array=[p[key]["ci"][1] - v for p, v in zip(points, values)],
                             arrayminus=[v - p[key]["ci"][0] for p, v in zip(points, values)]),
            )
        fig.update_xaxes(title_text="step", row=1, col=col)
    fig.update_yaxes(range=[-0.02, 1.05], title_text="rate", row=1, col=1)
    fig.update_layout(title="Does the backdoor persist through safety training? (95% Wilson intervals)")
    return fig
