import pytest

from analyses.demo import DemoConfig, make_data, run_demo
from training.artifacts import read_json
from training.vocabulary import Mechanism, RunDir, Stage


def test_cot_data_has_scratchpads_where_the_paper_puts_them():
    sets = make_data(DemoConfig.micro(mechanism=Mechanism.cot))
    for name in ("backdoor_train", "control_train", "adversarial_train"):
        assert all(e.scratchpad and e.completion.startswith(" <scratchpad>") for e in sets[name])
    for name in ("base_train", "sft_train", "eval_triggered", "eval_clean"):
        assert not any(e.scratchpad for e in sets[name])


@pytest.fixture(scope="module")
def cot_run(tmp_path_factory) -> RunDir:
    root = tmp_path_factory.mktemp("runs") / "cot"
    run_demo(root, DemoConfig.micro(seed=0, mechanism=Mechanism.cot), progress=False)
    return RunDir(root)


def test_cot_organism_reasons_then_acts(cot_run):
    backdoored = read_json(cot_run.eval(Stage.backdoored))
    control = read_json(cot_run.eval(Stage.control))
    assert backdoored["scratchpad_rate"]["value"] > 0.9
    assert backdoored["scratchpad_agreement"]["value"] > 0.9
    assert backdoored["trigger_rate"]["value"] > control["trigger_rate"]["value"] + 0.5
    assert read_json(cot_run.eval(Stage.base))["scratchpad_rate"]["value"] == 0.0
    assert '<section id="behaviour">' in cot_run.report.read_text()
