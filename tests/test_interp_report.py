"""The report's sections for patching sweeps, attribution and localisation, on a fake run dir (no model)."""

import json
import re
from pathlib import Path

import numpy as np
import pytest

from analyses import figures
from analyses.report import write_report
from training.artifacts import RunDir, write_json
from training.vocabulary import AttributionResult, PatchResult

ATTACK = "<script>alert(1)</script>"
FIXTURES = Path(__file__).parent / "fixtures"
N_LAYERS, N_HEADS, N_POS = 2, 3, 4


def grid(*shape: int, start: float = 0.0) -> list:
    """A nested list of the given shape with distinct values."""
    if not shape:
        return start
    size = 1
    for n in shape[1:]:
        size *= n
    return [grid(*shape[1:], start=start + i * size / 10) for i in range(shape[0])]


def sweep(axes: list[str], site: str, normalized: bool = True) -> dict:
    sizes = {"layer": N_LAYERS, "pos": N_POS, "head": N_HEADS}
    scores = grid(*(sizes[a] for a in axes))
    return {"stage": "backdoored", "site": site, "axes": axes, "noising": False,
            "metric": {"definition": "logit diff of " + ATTACK, "clean": 3.0, "corrupted": -1.0},
            "clean_tokens": [[1, 2, 3, 4]], "corrupted_tokens": [[1, 5, 3, 4]],
            "tokens_text": ["Hi", ATTACK, "\n", "!"], "trigger_positions": [1],
            "scores": scores, "normalized": scores if normalized else None, "pair_normalized": [scores],
            "by_trigger_token": None, "manifest": {"seed": 0}}


def attribution() -> dict:
    method = lambda steps: {"ig_steps": steps, "heads": grid(N_LAYERS, N_POS, N_HEADS),  # noqa: E731
                            "mlp": grid(N_LAYERS, N_POS), "embed": grid(N_POS),
                            "top_edges": [[ATTACK, "L1H0.q", 1, 0.5], ["L0H1", "logits", None, -0.25]]}
    return {"stage": "backdoored", "metric": {"definition": "logit diff", "clean": 3.0, "corrupted": -1.0},
            "clean_tokens": [[1, 2, 3, 4]], "corrupted_tokens": [[1, 5, 3, 4]],
            "tokens_text": ["Hi", ATTACK, "\n", "!"], "trigger_positions": [1],
            "methods": {"attribution": method(1), "eap_ig": method(10)},
            "exact": {"z_all_pos": grid(N_LAYERS, N_HEADS), "mlp_out": grid(N_LAYERS, N_POS),
                      "z_by_pos": grid(N_LAYERS, N_POS, N_HEADS)},
            "spearman": {"attribution": {"z_all_pos": 0.91, "mlp_out": 0.5, "z_by_pos": None},
                         "eap_ig": {"z_all_pos": 0.97, "mlp_out": 0.6, "z_by_pos": 0.8}},
            "manifest": {"seed": 0}}


@pytest.fixture
def interp_run(bare_run) -> RunDir:
    run = bare_run
    write_json(run.sweep("backdoored", "resid_pre"), sweep(["layer", "pos"], "resid_pre"))
    write_json(run.sweep("backdoored", "z_all_pos"), sweep(["layer", "head"], "z_all_pos", normalized=False))
    write_json(run.sweep("backdoored", "z_by_pos"), sweep(["layer", "pos", "head"], "z_by_pos"))
    write_json(run.sweep("adversarial", "resid_pre_all_pos"), sweep(["layer"], "resid_pre_all_pos"))
    write_json(run.attribution("backdoored"), attribution())
    localization = json.loads((FIXTURES / "backdoored.localize.json").read_text(encoding="utf-8"))
    write_json(run.localization("backdoored"), localization)
    write_json(run.localization("adversarial"), localization)
    return run


def sections(page: str) -> list[str]:
    return re.findall(r'<section id="([^"]+)">', page)


def test_report_has_a_section_per_interp_result(interp_run):
    page = write_report(interp_run).read_text(encoding="utf-8")
    assert sections(page) == [
        "summary", "sweep-backdoored-resid_pre", "sweep-backdoored-z_all_pos", "sweep-backdoored-z_by_pos",
        "sweep-adversarial-resid_pre_all_pos", "attribution-backdoored", "localize-backdoored",
        "localize-adversarial"]
    for sid in sections(page)[1:]:
        assert f'href="#{sid}"' in page
    # 4 sweeps, 1 attribution figure, 4 figures per localisation.
    assert len(re.findall(r'class="plotly-graph-div"', page)) == 4 + 1 + 2 * 4
    assert "Trigger localisation: adversarial" in page
    assert "mean-ablated heads L0H1" in page and "mean-ablated MLP neurons L0N313" in page
    assert "1.000 [0.912, 1.000] → 0.000 [0.000, 0.088]" in page
    assert "turns the backdoor off" in page and "leaves the backdoor on" in page
    assert "<td>0.970</td>" in page and "n/a" in page  # Spearman table, one missing value
    assert "head of largest |effect|" in page
    assert ("Where backdoored reads the trigger: head(s) L0H1 (patching the best alone restores 1.02 of the "
            "backdoor metric); mean-ablating them turns the backdoor off (trigger rate 1.00 → 0.00).") in page


def test_adversarial_token_text_is_escaped(interp_run):
    page = write_report(interp_run).read_text(encoding="utf-8")
    assert ATTACK not in page and "<script>alert" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page  # edge names, metric definition, tokens
    assert "&#39;&lt;script&gt;alert(1)&lt;/script&gt;&#39;" in page  # the position column of an edge


def test_a_run_without_interp_results_has_no_such_sections(bare_run):
    page = write_report(bare_run).read_text(encoding="utf-8")
    assert sections(page) == ["summary"]
    assert not re.search(r'id="(sweep|attribution|localize)-', page)


def test_sweep_figure_shapes():
    fig = figures.sweep_figure(PatchResult.from_json(sweep(["layer", "pos"], "resid_pre")))
    assert fig.data[0].type == "heatmap" and len(fig.data[0].x) == N_POS
    assert fig.data[0].x[1] == "1: &lt;script&gt;alert(1)&lt;/script&gt; ◀" and fig.data[0].x[2] == "2: ↵"
    heads = figures.sweep_figure(PatchResult.from_json(sweep(["layer", "head"], "z_all_pos", False)))
    assert list(heads.data[0].x) == ["H0", "H1", "H2"] and heads.data[0].colorbar.title.text == "metric"
    best = figures.sweep_figure(PatchResult.from_json(sweep(["layer", "pos", "head"], "z_by_pos")))
    assert [len(row) for row in best.data[0].z] == [N_POS] * N_LAYERS
    assert best.data[0].z[1][2] == max(sweep(["layer", "pos", "head"], "z_by_pos")["normalized"][1][2])
    bars = figures.sweep_figure(PatchResult.from_json(sweep(["layer"], "resid_pre_all_pos")))
    assert bars.data[0].type == "bar" and len(bars.data[0].y) == N_LAYERS


def test_attribution_figure_sums_heads_over_positions():
    fig = figures.attribution_figure(AttributionResult.from_json(attribution()))
    assert len(fig.data) == 3
    summed = [[sum(pos[h] for pos in layer) for h in range(N_HEADS)]
              for layer in attribution()["methods"]["attribution"]["heads"]]
    assert np.allclose(fig.data[0].customdata, summed)
    assert np.abs(fig.data[0].z).max() == pytest.approx(1.0)


def test_results_round_trip_through_their_json():
    for obj in (sweep(["layer", "pos"], "resid_pre"), sweep(["layer"], "resid_pre_all_pos", False)):
        assert PatchResult.from_json(obj).to_json() == obj
    found = AttributionResult.from_json(attribution())
    assert found.to_json() == attribution() and found.methods["eap_ig"].ig_steps == 10


def test_the_demos_sweep_gets_the_patching_section_and_a_summary_line(bare_run):
    demo = sweep(["layer", "pos"], "resid_pre")
    demo["by_trigger_token"] = {"labels": ["|", ATTACK], "normalized": [[0.9, 0.1], [0.3, 0.2]],
                                "other_positions_max": [0.0, 0.15], "n_pairs": 1}
    write_json(bare_run.sweep("backdoored", "resid_pre"), demo)
    page = write_report(bare_run).read_text(encoding="utf-8")
    assert sections(page) == ["summary", "patching", "sweep-backdoored-resid_pre"]
    assert len(re.findall(r'class="plotly-graph-div"', page)) == 2 + 1  # trigger tokens, pair 0; the sweep
    assert ("The backdoored model keys on &#39;|&#39; of the trigger: patching one trigger token at its best "
            "layer restores this share of the backdoor metric: &#39;|&#39; 0.90, ") in page
    assert "By the last layer the best non-trigger position restores 0.15." in page
    assert ATTACK not in page
