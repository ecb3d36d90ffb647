"""Attribution patching (`interp.attribute`) against TransformerLens's `attribution_patch`, and EAP-IG's
own identities: completeness at the input, neurons summing to their MLP, edges summing to nodes."""

import pytest
import torch
from transformer_lens.tools.analysis.attribution_patching import (
    EdgeAttributionConfig,
    attribution_patch,
    cache_activation_and_gradient,
)

from interp.attribute import attribute, attribute_edges
from interp.pairs import backdoor_logit_diff
from interp.patch import activation_patch
from training.vocabulary import Node


@pytest.fixture(scope="module")
def pairs(matched_pairs):
    """Three triggered prompts of one length, their untriggered twins, and the backdoor metric with the
    first pair's tokens (TransformerLens's `attribution_patch` scores one prompt at a time)."""
    b, h = matched_pairs[0].backdoor_token, matched_pairs[0].helpful_token
    clean = torch.stack([p.triggered for p in matched_pairs])
    corrupted = torch.stack([p.untriggered for p in matched_pairs])
    return clean, corrupted, lambda logits: backdoor_logit_diff(logits, b, h)


def reference(bridge, pairs, granularity):
    clean, corrupted, metric = pairs
    return attribution_patch(bridge, clean, corrupted, lambda logits: metric(logits).sum(),
                             EdgeAttributionConfig(granularity=granularity))


def test_nodes_equal_transformer_lens(bridge, pairs):
    ours = attribute(bridge, *pairs)
    theirs = reference(bridge, pairs, "node")
    n_layers, n_pos, n_heads = ours.heads.shape
    assert len(theirs.node_scores) == n_pos + n_layers * n_pos * (n_heads + 1)
    for node, value in theirs.node_scores.items():
        same = {"embed": Node.embed(), "mlp_out": Node.mlp(node.layer)}.get(node.kind,
                                                                            Node.attn(node.layer, node.head))
        mine = ours.score(same, node.position)
        assert mine == pytest.approx(value, abs=1e-4), node
    assert ours.heads.abs().max() > 1e-2  # not trivially zero


def test_edges_equal_transformer_lens_and_restore_the_flags(bridge, pairs):
    flags = (bridge.cfg.use_attn_result, bridge.cfg.use_split_qkv_input, bridge.cfg.use_hook_mlp_in)
    ours = attribute_edges(bridge, *pairs)
    assert (bridge.cfg.use_attn_result, bridge.cfg.use_split_qkv_input, bridge.cfg.use_hook_mlp_in) == flags
    theirs = reference(bridge, pairs, "edge")
    writer = {node.name: i for i, node in enumerate(ours.writers)}
    reader = {node.name: i for i, node in enumerate(ours.readers)}

    def names(w, r):
        w_name = {"embed": "embed", "mlp_out": f"MLP{w.layer}"}.get(w.kind, f"L{w.layer}H{w.head}")
        r_name = {"logits": "logits", "mlp_in": f"MLP{r.layer}"}.get(r.kind,
                                                                     f"L{r.layer}H{r.head}.{r.kind[0]}")
        return writer[w_name], reader[r_name]

    assert len(theirs.edge_scores) == int(ours.mask.sum()) * ours.scores.shape[0]
    for (w, r), value in theirs.edge_scores.items():
        i, j = names(w, r)
        assert ours.mask[i, j], (w, r)
        assert ours.scores[w.position, i, j].item() == pytest.approx(value, abs=1e-4), (w, r)
    top = ours.top(3)
    assert len(top) == 3 and abs(top[0][1]) >= abs(top[2][1]) > 0
    (edge, score), = ours.top(1)
    w, r, position = edge.writer.name, edge.reader.name, edge.position
    assert score == ours.scores[position, writer[w], reader[r]].item() and ours.mask[writer[w], reader[r]]
    assert ours.top(1, by_position=False)[0][0].position is None


def test_eap_ig_input_scores_complete_the_metric_gap(bridge, pairs):
    one, many = (attribute(bridge, *pairs, ig_steps=steps) for steps in (1, 32))
    gap = many.clean_metric - many.corrupted_metric
    error_one, error_many = (abs(a.embed.sum().item() - gap) for a in (one, many))
    assert abs(gap) > 1
    assert error_many < 0.05 * abs(gap) and error_many < error_one / 5


def test_a_sites_own_path_completes_patching_that_whole_site(bridge, pairs):
    """With `path="site"` each MLP's scores add up to the exact effect of patching its whole output
    (every position) from clean into corrupted, and one step is plain attribution patching."""
    clean, corrupted, metric = pairs
    site = attribute(bridge, clean, corrupted, metric, ig_steps=32, path="site")
    one = attribute(bridge, clean, corrupted, metric, ig_steps=1, path="site")
    torch.testing.assert_close(one.heads, attribute(bridge, *pairs).heads, atol=1e-5, rtol=0)
    for layer in range(bridge.cfg.n_layers):
        name = f"blocks.{layer}.hook_mlp_out"
        _, cache = bridge.run_with_cache(clean, names_filter=[name])
        clean_out = cache[name]
        patched = bridge.run_with_hooks(corrupted, fwd_hooks=[(name, lambda act, hook, out=clean_out: out)])
        effect = metric(patched).mean().item() - site.corrupted_metric
        assert site.mlp[layer].sum().item() == pytest.approx(effect, abs=0.05 * abs(effect) + 1e-3), layer
    with pytest.raises(ValueError, match="path"):
        attribute(bridge, clean, corrupted, metric, path="output")


def test_chunks_of_steps_add_up_to_one_pass(bridge, pairs):
    whole = attribute(bridge, *pairs, ig_steps=5)
    chunked = attribute(bridge, *pairs, ig_steps=5, chunk=2)
    torch.testing.assert_close(chunked.heads, whole.heads, atol=1e-4, rtol=0)
    torch.testing.assert_close(chunked.neurons, whole.neurons, atol=1e-4, rtol=0)
    assert chunked.corrupted_metric == pytest.approx(whole.corrupted_metric, abs=1e-4)


def test_neurons_equal_an_independent_gradient_and_sum_to_their_mlp(bridge, pairs):
    clean, corrupted, metric = pairs
    ours = attribute(bridge, clean, corrupted, metric)
    names = [f"blocks.{layer}.mlp.hook_post" for layer in range(bridge.cfg.n_layers)]
    _, clean_cache = bridge.run_with_cache(clean, names_filter=names)
    expected = 0
    for i in range(len(clean)):
        cache = cache_activation_and_gradient(bridge, corrupted[i:i + 1], lambda logits: metric(logits).sum(),
                                              names_filter=names)
        expected = expected + torch.stack([(clean_cache[name][i] - cache.activations[name][0])
                                           * cache.gradients[name][0] for name in names])
    torch.testing.assert_close(ours.neurons, expected / len(clean), atol=1e-5, rtol=0)
    # The down-projection is linear without a bias, so the neurons' scores add up to the MLP's.
    torch.testing.assert_close(ours.neurons.sum(-1), ours.mlp, atol=1e-4, rtol=0)
    assert ours.mlp.abs().max() > 1e-2


def test_eap_ig_edges_add_up_to_the_writers_node_scores(bridge, pairs):
    nodes = attribute(bridge, *pairs, ig_steps=4)
    edges = attribute_edges(bridge, *pairs, ig_steps=4)
    out = edges.scores.sum(-1)  # [pos, writer]
    n_layers, n_pos, n_heads = nodes.heads.shape
    per_layer = out[:, 1:].reshape(n_pos, n_layers, n_heads + 1)
    torch.testing.assert_close(out[:, 0], nodes.embed, atol=1e-4, rtol=0)
    torch.testing.assert_close(per_layer[..., :n_heads].transpose(0, 1), nodes.heads, atol=1e-4, rtol=0)
    torch.testing.assert_close(per_layer[..., n_heads].T, nodes.mlp, atol=1e-4, rtol=0)
    assert edges.ig_steps == 4 and edges.clean_metric == pytest.approx(nodes.clean_metric)


def test_eap_ig_tracks_exact_patching_of_heads_better_than_plain_attribution(bridge, pairs):
    """Pearson's correlation with exact denoising of each head at each position (on the micro model:
    about 0.81 for plain attribution, 0.98 for EAP-IG with 10 steps)."""
    clean, corrupted, metric = pairs
    exact = activation_patch(bridge, clean, corrupted, "z_by_pos", metric, progress=False).flatten()
    plain, integrated = (torch.corrcoef(torch.stack([
        attribute(bridge, clean, corrupted, metric, ig_steps=steps).heads.flatten(), exact]))[0, 1].item()
        for steps in (1, 10))
    assert plain > 0.5
    assert integrated > 0.9 and integrated > plain


def test_bad_input_is_refused(bridge, pairs):
    clean, corrupted, metric = pairs
    with pytest.raises(ValueError, match="one \\[batch, pos\\] shape"):
        attribute(bridge, clean, corrupted[:, :-1], metric)
    with pytest.raises(ValueError, match="one \\[batch, pos\\] shape"):
        attribute_edges(bridge, clean[0], corrupted[0], metric)
    with pytest.raises(ValueError, match="ig_steps"):
        attribute(bridge, clean, corrupted, metric, ig_steps=0)
    with pytest.raises(ValueError, match="chunk"):
        attribute(bridge, clean, corrupted, metric, ig_steps=2, chunk=0)
