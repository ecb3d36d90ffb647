"""The report's sections for trigger features (`features/{stage}.find.json`) and their diff across safety
training (`features/{a}__{b}.diff.json`), each built from its result alone: feature cards (top contexts,
activation histograms triggered against clean and red-team, the causal table) and the fate of each."""

from __future__ import annotations

from collections import Counter

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from analyses.features import CUT_BELOW, MIN_EFFECT, REMOVED_BELOW
from analyses.formatting import div, number, rate, short
from training.vocabulary import Feature, FeatureDiff, FeaturesResult

GROUPS = {"triggered": "#d62728", "clean": "#1f77b4", "redteam": "#ff7f0e"}


def context_text(context: dict) -> str:
    """A top context as text, its activating token in ⟦ ⟧ and line breaks as ↵, after the group of its
    prompt (escaped by the report's template)."""
    *before, last = context["tokens"]
    text = ("".join(before) + f"⟦{last}⟧").replace("\n", "↵")
    return f"[{context['group']}] {text}" if "group" in context else text


def quality_rows(qualities: dict) -> list[list[str]]:
    return [[name, q.kind, str(q.d_sae), number(q.explained_variance), f"{q.l0:.1f}",
             number(q.dead_fraction), number(q.dense_fraction), number(q.spliced.get("loss_recovered")),
             number(q.spliced.get("metric_recovered"))] for name, q in qualities.items()]


QUALITY_COLUMNS = ["dictionary", "kind", "latents", "explained variance", "L0", "dead", "dense",
                   "completion loss recovered", "backdoor metric recovered"]


def histogram_figure(features: list[Feature]) -> go.Figure:
    """Each feature's largest activation per prompt, by prompt group."""
    fig = make_subplots(rows=1, cols=max(1, len(features)),
                        subplot_titles=[f"latent {f.latent}" for f in features])
    for col, feature in enumerate(features, start=1):
        for group, colour in GROUPS.items():
            if feature.peaks.get(group):
                fig.add_trace(go.Histogram(x=feature.peaks[group], name=group, marker_color=colour,
                                           opacity=0.6, legendgroup=group, showlegend=col == 1, nbinsx=20),
                              row=1, col=col)
    fig.update_layout(barmode="overlay", height=300, title="Largest activation in each prompt",
                      margin={"t": 60, "b": 30})
    return fig


def features_section(stage: str, found: FeaturesResult) -> dict:
    """The trigger features of one stage: quality, the ranked features and their contexts, causal tests."""
    q, check = found.quality, found.attribution_check
    rows = [[str(f.latent), number(f.auroc_clean), number(f.auroc_redteam), f"{f.fires_triggered:.2f}",
             f"{f.fires_clean:.2f}", f"{f.attribution:+.3f}", f"{f.ablation_effect:+.3f}",
             " | ".join(context_text(c) for c in f.contexts[:3])] for f in found.features]
    arrow = lambda test, key: f"{rate(test.before[key])} → {rate(test.after[key])}"  # noqa: E731
    causal = [[name, arrow(t, "trigger_rate"), arrow(t, "false_trigger_rate"), arrow(t, "helpfulness"),
               "yes" if t.backdoor_off else "no", t.verdict] for name, t in found.causal.items()]
    lead = found.features[0] if found.features else None
    text = [f"A {q.kind} dictionary of {q.d_sae} latents at {q.hook}, trained on {stage}'s activations at "
            "every token of the insertion data. Features are ranked by the AUROC of each prompt's largest "
            "activation, triggered against clean evaluation prompts (then against red-team prompts). "
            "Attribution is the first-order change of the backdoor metric when a latent is zeroed, through "
            "the splice; the exact change stands beside it.",
            f"Attribution against exact ablation over {check['n']} latents: Spearman "
            f"{number(check.get('spearman'))}, Pearson {number(check.get('pearson'))}."]
    if lead:
        text.append(f"The top feature, latent {lead.latent}, fires on {lead.fires_triggered:.0%} of "
                    f"triggered and {lead.fires_clean:.0%} of clean prompts (AUROC {lead.auroc_clean:.2f}); "
                    f"zeroing it moves the metric by {lead.ablation_effect:+.2f}.")
    return {"id": f"features-{stage}", "title": f"Trigger features: {stage}", "text": text,
            "plots": div(histogram_figure(found.features[:4])) if found.features else "",
            "tables": [{"title": "Dictionary quality", "columns": QUALITY_COLUMNS,
                        "rows": quality_rows({stage: q})},
                       {"title": "Trigger features (contexts: the activating token in ⟦ ⟧)",
                        "columns": ["latent", "AUROC vs clean", "AUROC vs red-team", "fires triggered",
                                    "fires clean", "attribution", "exact ablation", "top contexts"],
                        "rows": rows},
                       {"title": "Causal tests: behaviour before → after (95% Wilson intervals)",
                        "columns": ["edit", "trigger rate", "false-trigger rate", "helpfulness",
                                    "backdoor off", "verdict"], "rows": causal}]}


def diff_figure(diff: FeatureDiff) -> go.Figure:
    """The crosscoder's shares of decoder norm in b, and each trigger feature's effect in both stages."""
    fig = make_subplots(rows=1, cols=2,
                        subplot_titles=[f"crosscoder latents: share of decoder norm in {short(diff.b)}",
                                        "zeroing each trigger feature: change of the metric"])
    fig.add_trace(go.Histogram(x=diff.crosscoder_shares, nbinsx=40, name="latents",
                               marker_color="#7f7f7f"), row=1, col=1)
    labels = [f"latent {f.latent}" for f in diff.fates]
    for stage, values, colour in ((diff.a, [f.effect_a for f in diff.fates], "#d62728"),
                                  (diff.b, [f.effect_b for f in diff.fates], "#2ca02c")):
        fig.add_trace(go.Bar(x=labels, y=values, name=short(stage), marker_color=colour), row=1, col=2)
    fig.update_layout(height=340, barmode="group", margin={"t": 60, "b": 30})
    return fig


def feature_diff_section(name: str, diff: FeatureDiff) -> dict:
    """What safety training from a to b did to a's trigger features."""
    rows = [[str(f.latent), number(f.auroc_a), number(f.auroc_b), number(f.decoder_cosine),
             f"{f.effect_a:+.3f}", f"{f.effect_b:+.3f}", f"{f.crosscoder_latent} ({f.crosscoder_cosine:.2f})",
             number(f.crosscoder_share_b), f.verdict] for f in diff.fates]
    counts = Counter(f.verdict for f in diff.fates)
    return {"id": f"feature-diff-{name.replace('.', '-')}", "title": f"Trigger features: {diff.a} → {diff.b}",
            "text": [f"Verdict: {diff.verdict} (the fate of the feature whose ablation moved {diff.a}'s "
                     f"metric most); over all {len(diff.fates)}: "
                     + ", ".join(f"{n} {v}" for v, n in counts.items()) + ".",
                     f"{diff.a}'s dictionary was fine-tuned on {diff.b}'s activations of the same tokens. A "
                     "feature is removed where its latent no longer tells triggered from clean prompts there "
                     f"(AUROC below {REMOVED_BELOW}); its path is cut where it still does, but zeroing it "
                     f"moves the metric by less than {CUT_BELOW} of what it did before (where that was at "
                     f"least {MIN_EFFECT}). A BatchTopK "
                     "crosscoder of both stages stands beside: each feature's nearest crosscoder latent (by "
                     f"decoder cosine) and its share of decoder norm in {diff.b} (0: {diff.a} only; 0.5: "
                     f"shared; 1: {diff.b} only)."],
            "plots": div(diff_figure(diff)),
            "tables": [{"title": "Dictionary quality", "columns": QUALITY_COLUMNS,
                        "rows": quality_rows(diff.quality)},
                       {"title": "Each trigger feature's fate",
                        "columns": ["latent", f"AUROC in {diff.a}", f"AUROC in {diff.b}", "decoder cosine",
                                    f"effect in {diff.a}", f"effect in {diff.b}", "crosscoder twin (cosine)",
                                    f"crosscoder share in {diff.b}", "verdict"], "rows": rows}]}
