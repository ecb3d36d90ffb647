"""Circuits (`interp.circuit`) on the micro organism: the full graph is the clean run, the empty graph
the corrupted one, and a circuit of only the embedding's edge into the logits is the corrupted run
with the embedding's difference added before the unembedding."""

import pytest
import torch

from interp.attribute import Attributor
from interp.circuit import (
    GREEDY,
    SELECTIONS,
    TOP,
    circuit_mask,
    circuit_metrics,
    edge_graph,
    faithfulness_curve,
    threshold_size,
)
from interp.graph import ResidualGraph
from interp.pairs import pair_metric
from training.vocabulary import Node


@pytest.fixture(scope="module")
def task(bridge, matched_pairs):
    clean = torch.stack([p.triggered for p in matched_pairs])
    corrupted = torch.stack([p.untriggered for p in matched_pairs])
    return clean, corrupted, pair_metric(matched_pairs)


@pytest.fixture(scope="module")
def graph(bridge, task):
    return edge_graph(bridge, *task, Attributor(ig_steps=3))


def test_full_graph_is_the_clean_run_and_empty_graph_the_corrupted_run(bridge, task, graph):
    clean, corrupted, metric = task
    full, empty = graph.mask, torch.zeros_like(graph.mask)
    with torch.no_grad():
        high, low = (metric(bridge(tokens)).mean().item() for tokens in (clean, corrupted))
    assert abs(high - low) > 1  # the trigger moves the metric
    values = circuit_metrics(bridge, *task, torch.stack([full, empty, full]), chunk=2)
    assert values.tolist() == pytest.approx([high, low, high], abs=1e-4)
    assert graph.clean_metric == pytest.approx(high, abs=1e-4)


def test_the_embeddings_edge_into_the_logits_alone(bridge, task, graph):
    clean, corrupted, metric = task
    only = torch.zeros_like(graph.mask)
    only[graph.writers.index(Node.embed()), graph.readers.index(Node.logits())] = True
    last = f"blocks.{bridge.cfg.n_layers - 1}.hook_resid_post"
    with torch.no_grad():
        _, cache = bridge.run_with_cache(clean, names_filter="hook_embed")
        shift = cache["hook_embed"]
        _, cache = bridge.run_with_cache(corrupted, names_filter="hook_embed")
        shift = shift - cache["hook_embed"]
        expected = metric(bridge.run_with_hooks(corrupted, fwd_hooks=[(last, lambda a, hook: a + shift)]))
    value = circuit_metrics(bridge, *task, only[None])
    assert value.item() == pytest.approx(expected.mean().item(), abs=1e-4)


def test_curves_run_from_corrupted_to_clean_and_nest(bridge, task, graph):
    shape = tuple(graph.mask.shape)
    assert [selection.name for selection in SELECTIONS] == ["top", "greedy"]
    for selection in SELECTIONS:
        order = selection.order(graph)
        assert len(order) == len(set(order)) == int(graph.mask.sum())
        assert all(graph.mask[w, r] for w, r in order)
        curve = faithfulness_curve(bridge, *task, order, shape)
        assert curve.sizes[0] == 0 and curve.sizes[-1] == len(order)
        assert curve.faithfulness[0] == pytest.approx(0, abs=1e-5)
        assert curve.faithfulness[-1] == pytest.approx(1, abs=1e-5)
        assert 0 < curve.area <= 1.5 and curve.smallest(0.8) is not None
    top = TOP.order(graph)
    assert (circuit_mask(top, 5, shape) <= circuit_mask(top, 9, shape)).all()


def test_greedy_circuits_connect_to_the_logits(graph):
    order = GREEDY.order(graph)
    reached = {Node.logits()}
    for w, r in order[:40]:
        assert graph.readers[r].component in reached
        reached.add(graph.writers[w])


def test_threshold_and_top_agree(graph):
    magnitudes = graph.scores.abs()[graph.mask]
    threshold = magnitudes.median().item()
    n = threshold_size(graph, threshold)
    top = circuit_mask(TOP.order(graph), n, tuple(graph.mask.shape))
    assert n == int((magnitudes >= threshold).sum())
    assert graph.scores.abs()[top].min() >= threshold


def test_the_graph_is_the_attribution_engines(graph, bridge):
    assert torch.equal(graph.mask, ResidualGraph.of(bridge).mask)
    assert (graph.scores[~graph.mask] == 0).all() and graph.scores.abs().max() > 1e-3
    assert graph.method.ig_steps == 3 and graph.method.name == "eap-ig"
    nodes = graph.node_scores()
    assert list(nodes) == graph.writers
    assert nodes[Node.embed()] == pytest.approx(graph.scores[0].sum().item())
    (edge, score), = graph.scored(TOP.order(graph)[:1])
    assert abs(score) == graph.scores.abs().max().item() and edge.reader in graph.readers
