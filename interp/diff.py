"""What changed between two stages of one model, component by component: the weights, and the
outputs each component writes into the residual stream on the same prompts.

Both are relative: ‖b − a‖ / ‖a‖ (Frobenius), so a stage against itself gives 0 everywhere.

>>> relative_change(torch.ones(2, 2), torch.ones(2, 2) * 1.5)
0.5
"""

from __future__ import annotations

import torch
from jaxtyping import Int

from interp.attribute import keep_into
from interp.bridge import device_of
from interp.graph import ResidualGraph, edge_hooks, post_norm_gains, writes
from training.vocabulary import HEAD_MATRICES, MLP_MATRICES, Node


def relative_change(a: torch.Tensor, b: torch.Tensor) -> float:
    """‖b − a‖ / ‖a‖, or 0 where both are zero."""
    norm = a.norm().item()
    change = (b - a).norm().item()
    return change / norm if norm else (0.0 if change == 0 else float("inf"))


def weight_changes(a, b) -> list[dict]:
    """Each head's W_Q, W_K, W_V and W_O, each MLP's matrices and the (un)embedding, as
    {"component", "matrix", "relative_change"}. With grouped keys and values, a head's W_K and W_V
    are those of the key-value head it reads."""
    if (a.cfg.n_layers, a.cfg.n_heads, a.cfg.d_model) != (b.cfg.n_layers, b.cfg.n_heads, b.cfg.d_model):
        raise ValueError("the two models differ in shape; a weight diff needs one architecture")
    rows = []
    with torch.no_grad():
        for matrix in HEAD_MATRICES:
            wa, wb = getattr(a, matrix).float().cpu(), getattr(b, matrix).float().cpu()
            for layer in range(a.cfg.n_layers):
                for head in range(a.cfg.n_heads):
                    kv = head * wa.shape[1] // a.cfg.n_heads  # the head's own, or its shared K/V head
                    rows.append({"component": Node.attn(layer, head).name, "matrix": matrix,
                                 "relative_change": relative_change(wa[layer, kv], wb[layer, kv])})
        for matrix in MLP_MATRICES:
            if getattr(a, matrix, None) is None:  # no gate without a gated MLP
                continue
            wa, wb = getattr(a, matrix).float().cpu(), getattr(b, matrix).float().cpu()
            rows += [{"component": Node.mlp(layer).name, "matrix": matrix,
                      "relative_change": relative_change(wa[layer], wb[layer])}
                     for layer in range(a.cfg.n_layers)]
        for matrix, component in (("W_E", "embed"), ("W_U", "unembed")):
            rows.append({"component": component, "matrix": matrix,
                         "relative_change": relative_change(getattr(a, matrix).float().cpu(),
                                                            getattr(b, matrix).float().cpu())})
    return rows


def output_differences(a, b, tokens: Int[torch.Tensor, "batch pos"]) -> dict[Node, float]:
    """Each writer's (embedding, head, MLP) output on `tokens` in `b` against `a`, over every position."""
    outputs = [_writer_outputs(bridge, tokens) for bridge in (a, b)]
    return {node: relative_change(outputs[0][..., i, :], outputs[1][..., i, :])
            for i, node in enumerate(ResidualGraph.of(a).writers)}


def _writer_outputs(bridge, tokens) -> torch.Tensor:
    """[batch, pos, writer, d_model] in the graph's order."""
    graph = ResidualGraph.of(bridge)
    acts: dict[str, torch.Tensor] = {}
    with torch.no_grad(), edge_hooks(bridge):
        with bridge.hooks(fwd_hooks=[(name, keep_into(acts, name)) for name in graph.kept_hooks()]):
            bridge(tokens.to(device_of(bridge)))
        return writes(graph, acts, post_norm_gains(bridge, graph)).cpu()
