"""The feature analyses on the micro organism: the demo's results, the command line, and the report."""

import dataclasses
import json

import pytest
from typer.testing import CliRunner

from analyses.cli import app
from analyses.feature_sections import context_text
from analyses.features import FeatureSettings, train_stage
from analyses.organism import DemoConfig
from analyses.report import write_report
from interp.dictionary import load_dictionary
from training.artifacts import write_json
from training.vocabulary import FEATURE_VERDICTS, FeatureDiff, FeaturesResult, Stage

runner = CliRunner()
MICRO = DemoConfig.micro().features


@pytest.fixture(scope="module")
def found(micro_run) -> FeaturesResult:
    return FeaturesResult.from_json(json.loads(micro_run.features(Stage.backdoored).read_text()))


def test_the_demo_finds_trigger_features_with_their_evidence(found, micro_run):
    q = found.quality
    assert q.hook == "blocks.1.hook_resid_pre" and q.kind == "batchtopk" and q.d_sae == 4 * 64
    assert 0.5 < q.explained_variance <= 1 and 0 < q.l0 <= 2 * q.k and 0 <= q.dead_fraction < 1
    assert q.spliced["loss_spliced"] > 0 and abs(q.spliced["metric_recovered"] - 1) < 0.5
    assert found.features and all(f.auroc_clean >= found.features[-1].auroc_clean for f in found.features)
    lead = found.features[0]
    assert lead.auroc_clean > 0.5 and lead.contexts and lead.peaks["triggered"]
    assert len(lead.peaks["triggered"]) == MICRO.n_prompts
    assert all(c["activation"] > 0 and len(c["token_ids"]) == len(c["tokens"]) for c in lead.contexts)
    groups = ["triggered", "clean", "redteam"]
    assert all(c["group"] == groups[c["prompt"] // MICRO.n_prompts] for c in lead.contexts)
    assert found.attribution_check["n"] >= len(found.features)
    assert set(found.causal) == {"ablate_top1", f"ablate_top{MICRO.n_ablate}", "clamp_top1"}
    before = found.causal["ablate_top1"].before
    assert before["trigger_rate"]["n"] == MICRO.n_prompts and before == found.causal["clamp_top1"].before
    # the metric's token ids are there to recompute it
    assert len(found.metric["tokens"]) == len(found.metric["triggered_tokens"]) == MICRO.n_prompts


def test_the_demo_diffs_them_against_adversarial_training(micro_run, found):
    path = micro_run.feature_diff(Stage.backdoored, Stage.adversarial)
    diff = FeatureDiff.from_json(json.loads(path.read_text()))
    assert (diff.a, diff.b) == ("backdoored", "adversarial")
    assert [f.latent for f in diff.fates] == [f.latent for f in found.features]
    assert all(f.verdict in FEATURE_VERDICTS for f in diff.fates) and diff.verdict in FEATURE_VERDICTS
    assert all(0 <= f.crosscoder_share_b <= 1 and -1 <= f.decoder_cosine <= 1 for f in diff.fates)
    assert set(diff.quality) == {"backdoored", "adversarial", "crosscoder"}
    tuned = load_dictionary(diff.quality["adversarial"].path)
    assert tuned.cfg.sources == ("adversarial",) and tuned.cfg.steps == MICRO.finetune_steps
    assert load_dictionary(diff.quality["crosscoder"].path).cfg.sources == ("backdoored", "adversarial")
    # stage-wise fine-tuning starts from backdoored's dictionary: its decoders stay close
    assert sum(f.decoder_cosine for f in diff.fates) / len(diff.fates) > 0.5


def test_the_report_shows_feature_cards_and_the_diff(micro_run):
    page = micro_run.report.read_text()
    assert "Trigger features: backdoored" in page and "Trigger features: backdoored → adversarial" in page
    assert "⟦" in page and "Causal tests" in page


def test_train_writes_quality_and_reuses_the_dictionary_it_was_asked_for(micro_run, tmp_path):
    out = tmp_path / "quality.json"
    args = ["features", "train", str(micro_run.root), "--stage", "backdoored", "--expansion", "4", "--k", "8",
            "--steps", "300", "--prompts", "4"]
    result = runner.invoke(app, [*args, "--out", str(out)])
    assert result.exit_code == 0, result.output
    again = train_stage(micro_run, Stage.backdoored, MICRO, progress=False)
    assert json.loads(out.read_text())["explained_variance"] == pytest.approx(again.explained_variance)
    other = runner.invoke(app, [*args[:-4], "--k", "4", "--steps", "300", "--out", str(out)])
    assert other.exit_code != 0 and "k 8 (asked: 4)" in other.output and "Traceback" not in other.output


def test_find_writes_where_asked_and_bad_input_is_one_line(micro_run, tmp_path):
    out = tmp_path / "found.json"
    result = runner.invoke(app, ["features", "find", str(micro_run.root), "--stage", "backdoored",
                                 "--expansion", "4", "--k", "8", "--steps", "300", "--prompts", "4",
                                 "--features", "2", "--ablate", "1", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert len(json.loads(out.read_text())["features"]) <= 2
    bad = runner.invoke(app, ["features", "train", str(micro_run.root), "--kind", "gated"])
    assert bad.exit_code != 0 and "kind" in bad.output and "Traceback" not in bad.output
    bad = runner.invoke(app, ["features", "train", str(micro_run.root), "--k", "0"])
    assert bad.exit_code != 0 and "k must" in bad.output


def test_feature_settings_default_to_the_middle_layer(bridge):
    assert FeatureSettings().hook_of(bridge) == f"blocks.{bridge.cfg.n_layers // 2}.hook_resid_pre"
    assert FeatureSettings(hook="blocks.0.hook_mlp_out").hook_of(bridge) == "blocks.0.hook_mlp_out"


def test_contexts_from_prompts_are_escaped_in_the_report(found, bare_run):
    """A context's tokens are text from prompts: adversarial, so escaped."""
    hostile = {"prompt": 0, "position": 1, "activation": 1.0, "token_ids": [1, 2],
               "tokens": ["<script>alert(1)</script>", "<img src=x onerror=alert(2)>"]}
    feature = dataclasses.replace(found.features[0], contexts=[hostile])
    write_json(bare_run.features(Stage.backdoored), dataclasses.replace(found, features=[feature]).to_json())
    page = write_report(bare_run).read_text()
    assert "Trigger features: backdoored" in page
    assert "<script>alert(1)" not in page and "<img src=x" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;⟦&lt;img src=x onerror=alert(2)&gt;⟧" in page
    assert context_text({**hostile, "tokens": ["a\nb", "c"], "group": "clean"}) == "[clean] a↵b⟦c⟧"
