"""Circuits: sets of edges of the residual graph (`interp.attribute.edge_mask`), chosen by their
scores, and how faithfully each reproduces the model's behaviour.

A circuit runs the clean prompts with every edge outside it carrying its corrupted value: each
reader's input is its input on the corrupted prompt plus, for each writer that feeds it inside the
circuit, that writer's output in this run minus its output on the corrupted prompt. The full graph
therefore reproduces the clean run and the empty graph the corrupted one. Faithfulness is the share of
the metric recovered: 0 at the corrupted run, 1 at the clean one.

Edges are ranked by |score| (`top`) or grown from the logits by the best edge into the circuit so
far (`greedy`); a circuit of n edges is the first n of a ranking, so circuits of growing size nest:

>>> scores = torch.tensor([[5.0, 0.5, 0.2], [0.0, 3.0, -2.0], [0.0, 0.0, 4.0]])
>>> mask = scores != 0  # embed -> A.q, B, logits; A -> B, logits; B -> logits
>>> top_order(scores, mask)
[(0, 0), (2, 2), (1, 1), (1, 2), (0, 1), (0, 2)]
>>> greedy_order(scores, mask, ["embed", "A", "B"], ["A.q", "B", "logits"])
[(2, 2), (1, 1), (0, 0), (1, 2), (0, 1), (0, 2)]
>>> threshold_size(scores, mask, 1.5)
4
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass

import numpy as np
import torch
from jaxtyping import Bool, Float, Int

from interp.attribute import EdgeAttribution, attribute_edges, edge_hooks, keep_into, per_node
from interp.bridge import device_of
from training.vocabulary import Metric

EdgeIndex = tuple[int, int]  # (writer index, reader index)
SELECTIONS = ("top", "greedy")


@dataclass
class EdgeGraph:
    """EdgeIndex scores summed over positions, with the metric on the clean and corrupted prompts."""

    scores: Float[torch.Tensor, "writer reader"]
    mask: Bool[torch.Tensor, "writer reader"]
    writers: list[str]
    readers: list[str]
    clean_metric: float
    corrupted_metric: float
    ig_steps: int

    @classmethod
    def from_attribution(cls, edges: EdgeAttribution) -> EdgeGraph:
        return cls(edges.scores.sum(0), edges.mask, edges.writers, edges.readers, edges.clean_metric,
                   edges.corrupted_metric, edges.ig_steps)

    def order(self, selection: str) -> list[EdgeIndex]:
        """Every edge, in the order `selection` ("top" or "greedy") adds them to a circuit."""
        if selection == "top":
            return top_order(self.scores, self.mask)
        if selection == "greedy":
            return greedy_order(self.scores, self.mask, self.writers, self.readers)
        raise ValueError(f"unknown selection {selection!r}; one of {', '.join(SELECTIONS)}")

    def node_scores(self) -> dict[str, float]:
        """Each writer's score: the sum of its edges' scores (its node's attribution score)."""
        return dict(zip(self.writers, self.scores.sum(1).tolist()))


def edge_graph(bridge, clean: Int[torch.Tensor, "batch pos"], corrupted: Int[torch.Tensor, "batch pos"],
               metric: Metric, *, ig_steps: int = 1, chunk: int | None = None) -> EdgeGraph:
    """The scored edge graph: EAP with `ig_steps=1`, EAP-IG with more."""
    return EdgeGraph.from_attribution(attribute_edges(bridge, clean, corrupted, metric, ig_steps=ig_steps,
                                                      chunk=chunk))


def top_order(scores: Float[torch.Tensor, "writer reader"], mask: Bool[torch.Tensor, "writer reader"]
              ) -> list[EdgeIndex]:
    """The graph's edges by decreasing |score| (ties in index order)."""
    flat = scores.abs().masked_fill(~mask, -1).flatten()
    order = torch.sort(flat, descending=True, stable=True).indices[: int(mask.sum())]
    return [divmod(i, mask.shape[1]) for i in order.tolist()]


def greedy_order(scores: Float[torch.Tensor, "writer reader"], mask: Bool[torch.Tensor, "writer reader"],
                 writers: list[str], readers: list[str]) -> list[EdgeIndex]:
    """Edges grown from the logits: each step adds the edge of largest |score| whose reader's node is
    already in the circuit, so every prefix is connected to the logits; edges that never connect come
    last, by |score|."""
    node = [reader.split(".")[0] for reader in readers]  # "L0H1.q" reads into node "L0H1"
    into: dict[str, list[int]] = {}
    for r, name in enumerate(node):
        into.setdefault(name, []).append(r)
    magnitude = scores.abs().tolist()
    heap: list[tuple[float, int, int]] = []
    reached: set[str] = set()

    def reach(name: str) -> None:
        if name not in reached:
            reached.add(name)
            for r in into.get(name, []):
                for w in mask[:, r].nonzero().flatten().tolist():
                    heapq.heappush(heap, (-magnitude[w][r], w, r))

    reach("logits")
    order: list[EdgeIndex] = []
    while heap:
        _, w, r = heapq.heappop(heap)
        order.append((w, r))
        reach(writers[w])
    taken = set(order)
    return order + [edge for edge in top_order(scores, mask) if edge not in taken]


def threshold_size(scores: Float[torch.Tensor, "writer reader"], mask: Bool[torch.Tensor, "writer reader"],
                   threshold: float) -> int:
    """How many edges score at least `threshold` in magnitude: the `top` circuit of that size."""
    return int((scores.abs()[mask] >= threshold).sum())


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
    cfg = bridge.cfg
    writer_hooks, reader_hooks = hook_slices(cfg.n_layers, cfg.n_heads)
    device = device_of(bridge)
    clean, corrupted = clean.to(device), corrupted.to(device)
    batch = clean.shape[0]
    out = []
    with torch.no_grad(), edge_hooks(bridge):
        corrupted_acts: dict[str, torch.Tensor] = {}
        names = [name for name, _ in writer_hooks + reader_hooks]
        with bridge.hooks(fwd_hooks=[(name, keep_into(corrupted_acts, name)) for name in names]):
            bridge(corrupted)
        for start in range(0, len(circuits), chunk):
            rows = circuits[start:start + chunk].to(device, torch.float32).repeat_interleave(batch, 0)
            steps = len(rows) // batch
            diff = torch.zeros(len(rows), clean.shape[1], circuits.shape[1], cfg.d_model,
                               device=device)
            hooks = [(name, _write(diff, corrupted_acts[name], index, steps)) for name, index in writer_hooks]
            hooks += [(name, _read(diff, corrupted_acts[name], rows[:, :, index], steps))
                      for name, index in reader_hooks]
            with bridge.hooks(fwd_hooks=hooks):
                values = metric(bridge(clean.repeat(steps, 1)))
            out.append(values.view(steps, batch).mean(1))
    return torch.cat(out).cpu()


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


def hook_slices(n_layers: int, n_heads: int) -> tuple[list[tuple[str, slice]], list[tuple[str, slice]]]:
    """Each writer and reader hook with the slice of `edge_names`' order it fills."""
    writers = [("hook_embed", slice(0, 1))]
    readers = []
    for layer in range(n_layers):
        w, r = 1 + layer * (n_heads + 1), layer * (3 * n_heads + 1)
        writers += [(f"blocks.{layer}.attn.hook_result", slice(w, w + n_heads)),
                    (f"blocks.{layer}.hook_mlp_out", slice(w + n_heads, w + n_heads + 1))]
        readers += [(f"blocks.{layer}.attn.hook_{kind}_input", slice(r + i * n_heads, r + (i + 1) * n_heads))
                    for i, kind in enumerate("qkv")]
        readers.append((f"blocks.{layer}.hook_mlp_in", slice(r + 3 * n_heads, r + 3 * n_heads + 1)))
    end = n_layers * (3 * n_heads + 1)
    readers.append((f"blocks.{n_layers - 1}.hook_resid_post", slice(end, end + 1)))
    return writers, readers


def _write(diff: torch.Tensor, corrupted: torch.Tensor, index: slice, steps: int):
    """Keeps this writer's output minus its corrupted output."""
    def hook(activation, hook):
        diff[:, :, index] = per_node(activation - corrupted.repeat(steps, *[1] * (corrupted.dim() - 1)))

    return hook


def _read(diff: torch.Tensor, corrupted: torch.Tensor, edges: torch.Tensor, steps: int):
    """Gives this reader its corrupted input plus the circuit's writers' differences."""
    def hook(activation, hook):
        patched = per_node(corrupted).repeat(steps, 1, 1, 1) + torch.einsum("bpwd,bwr->bprd", diff, edges)
        return patched if activation.dim() == 4 else patched[:, :, 0]

    return hook
