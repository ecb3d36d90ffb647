"""Attribution patching: every node's (or edge's) patching effect from gradients, in one backward pass.

The effect of patching a node from the corrupted run toward the clean one is estimated to first order
as (a_clean - a_corrupted) · ∂metric/∂a, with the gradient taken on the corrupted run (denoising, as in
TransformerLens's `attribution_patch`). EAP-IG (Hanna et al. 2024) replaces that gradient by its mean
along a straight path of input embeddings from the corrupted prompt to the clean one: the left Riemann
sum at alpha = k / ig_steps, k = 0 … ig_steps - 1, so `ig_steps=1` is plain attribution patching and
the input's scores sum to metric(clean) - metric(corrupted) as the steps grow.

Nodes are the embedding, each head's `hook_z`, each MLP's output and its neurons (`mlp.hook_post`).
Edges go from a writer into the residual stream (embedding, a head's `hook_result`, an MLP's output)
to a later reader of it at the same position (a head's q, k or v input, an MLP's input, the logits):

>>> edge_names(n_layers=1, n_heads=1)
(['embed', 'L0H0', 'MLP0'], ['L0H0.q', 'L0H0.k', 'L0H0.v', 'MLP0', 'logits'])
>>> edge_mask(n_layers=1, n_heads=1).int()
tensor([[1, 1, 1, 1, 1],
        [0, 0, 0, 1, 1],
        [0, 0, 0, 0, 1]], dtype=torch.int32)
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from jaxtyping import Bool, Float, Int

from interp.bridge import device_of
from training.vocabulary import Metric

EMBED = "hook_embed"


@dataclass
class Attribution:
    """Node scores averaged over the prompt pairs; the metrics are means over the prompts."""

    embed: Float[torch.Tensor, " pos"]
    heads: Float[torch.Tensor, "layer pos head"]
    mlp: Float[torch.Tensor, "layer pos"]
    neurons: Float[torch.Tensor, "layer pos d_mlp"]
    clean_metric: float
    corrupted_metric: float
    ig_steps: int

    def node(self, kind: str, position: int, layer: int | None = None, head: int | None = None) -> float:
        """One node's score, named as TransformerLens's `Node` names it ("embed", "attn_head_out",
        "mlp_out")."""
        if kind == "embed":
            return self.embed[position].item()
        if kind == "attn_head_out":
            return self.heads[layer, position, head].item()
        if kind == "mlp_out":
            return self.mlp[layer, position].item()
        raise ValueError(f"no node of kind {kind!r}")


@dataclass
class EdgeAttribution:
    """Edge scores averaged over the prompt pairs, per position; zero where `mask` has no edge."""

    scores: Float[torch.Tensor, "pos writer reader"]
    mask: Bool[torch.Tensor, "writer reader"]
    writers: list[str]
    readers: list[str]
    clean_metric: float
    corrupted_metric: float
    ig_steps: int

    def top(self, k: int = 10, *, by_position: bool = True) -> list[tuple[str, str, int | None, float]]:
        """The `k` edges of largest |score|, as (writer, reader, position, score); with
        `by_position=False` each edge is summed over positions first (position None)."""
        scores = self.scores if by_position else self.scores.sum(0, keepdim=True)
        magnitude = scores.abs().masked_fill(~self.mask, -1).flatten()
        out = []
        for index in magnitude.topk(min(k, magnitude.numel())).indices.tolist():
            pos, rest = divmod(index, self.mask.numel())
            writer, reader = divmod(rest, self.mask.shape[1])
            if self.mask[writer, reader]:
                out.append((self.writers[writer], self.readers[reader], pos if by_position else None,
                            scores[pos, writer, reader].item()))
        return out


def attribute(bridge, clean: Int[torch.Tensor, "batch pos"], corrupted: Int[torch.Tensor, "batch pos"],
              metric: Metric, *, ig_steps: int = 1, chunk: int | None = None) -> Attribution:
    """Every node's attribution score, averaged over the pairs (see the module docstring).

    All pairs and `chunk` interpolation steps (default: all) share one forward and backward pass:
    memory grows with chunk × batch sequences.
    """
    cfg = bridge.cfg
    layers = range(cfg.n_layers)
    z, mlp, post = ([name.format(layer) for layer in layers] for name in
                    ("blocks.{}.attn.hook_z", "blocks.{}.hook_mlp_out", "blocks.{}.mlp.hook_post"))
    names = [EMBED, *z, *mlp, *post]
    run = _integrate(bridge, clean, corrupted, metric, names, names, ig_steps, chunk)
    score = {name: (run.delta[name] * run.grad[name]).sum(-1).mean(0) for name in names}
    return Attribution(
        embed=score[EMBED],
        heads=torch.stack([score[name] for name in z]),
        mlp=torch.stack([score[name] for name in mlp]),
        neurons=torch.stack([run.delta[name].mul(run.grad[name]).mean(0) for name in post]),
        clean_metric=run.clean_metric, corrupted_metric=run.corrupted_metric, ig_steps=ig_steps)


def attribute_edges(bridge, clean: Int[torch.Tensor, "batch pos"],
                    corrupted: Int[torch.Tensor, "batch pos"], metric: Metric, *, ig_steps: int = 1,
                    chunk: int | None = None) -> EdgeAttribution:
    """Every edge's score: the writer's clean-minus-corrupted output · the metric's (mean) gradient
    at the reader's input. Turns on the bridge's per-head hooks for the call, then restores them."""
    cfg = bridge.cfg
    if getattr(cfg, "n_key_value_heads", None) not in (None, cfg.n_heads):
        raise ValueError("edge attribution needs one key and value head per query head (no GQA/MQA)")
    if getattr(cfg, "parallel_attn_mlp", False):
        raise ValueError("edge attribution assumes each MLP reads its own layer's attention output")
    n_layers, n_heads = cfg.n_layers, cfg.n_heads
    writers = [EMBED] + [name.format(layer) for layer in range(n_layers)
                         for name in ("blocks.{}.attn.hook_result", "blocks.{}.hook_mlp_out")]
    readers = [name.format(layer) for layer in range(n_layers)
               for name in ("blocks.{}.attn.hook_q_input", "blocks.{}.attn.hook_k_input",
                            "blocks.{}.attn.hook_v_input", "blocks.{}.hook_mlp_in")]
    readers.append(f"blocks.{n_layers - 1}.hook_resid_post")
    with edge_hooks(bridge):
        run = _integrate(bridge, clean, corrupted, metric, writers, readers, ig_steps, chunk)
    # One row per writer and per reader in `edge_names` order: [batch, pos, node, d_model].
    delta = torch.cat([per_node(run.delta[name]) for name in writers], dim=2)
    grad = torch.cat([per_node(run.grad[name]) for name in readers], dim=2)
    mask = edge_mask(n_layers, n_heads)
    scores = torch.einsum("bpwd,bprd->pwr", delta, grad) / delta.shape[0]
    return EdgeAttribution(scores.masked_fill(~mask, 0), mask, *edge_names(n_layers, n_heads),
                           clean_metric=run.clean_metric, corrupted_metric=run.corrupted_metric,
                           ig_steps=ig_steps)


def edge_names(n_layers: int, n_heads: int) -> tuple[list[str], list[str]]:
    """Writer and reader names, in the order of `EdgeAttribution.scores`' last two axes."""
    writers, readers = ["embed"], []
    for layer in range(n_layers):
        heads = [f"L{layer}H{head}" for head in range(n_heads)]
        writers += [*heads, f"MLP{layer}"]
        readers += [f"{head}.{kind}" for kind in "qkv" for head in heads] + [f"MLP{layer}"]
    return writers, readers + ["logits"]


def edge_mask(n_layers: int, n_heads: int) -> Bool[torch.Tensor, "writer reader"]:
    """Which writer feeds which reader: a reader sees every writer of an earlier layer, and an MLP
    also its own layer's heads."""
    def writer_order(layer: int, is_mlp: bool) -> int:  # 2 × layer, +1 for the MLP
        return 2 * layer + is_mlp

    writers = [-1] + [writer_order(layer, is_mlp) for layer in range(n_layers)
                      for is_mlp in [False] * n_heads + [True]]
    readers = [writer_order(layer, is_mlp) for layer in range(n_layers)
               for is_mlp in [False] * 3 * n_heads + [True]] + [2 * n_layers]
    return torch.tensor(writers)[:, None] < torch.tensor(readers)[None, :]


@dataclass
class _Run:
    delta: dict[str, torch.Tensor]  # clean minus corrupted activation, [batch, ...]
    grad: dict[str, torch.Tensor]  # the metric's gradient, averaged over the steps, [batch, ...]
    clean_metric: float
    corrupted_metric: float


def _integrate(bridge, clean, corrupted, metric: Metric, act_names: list[str], grad_names: list[str],
               ig_steps: int, chunk: int | None) -> _Run:
    """Clean activations from one pass; corrupted activations and path-averaged gradients from
    passes over the corrupted prompts with interpolated input embeddings, `chunk` steps each."""
    _check(clean, corrupted, ig_steps, chunk)
    device = device_of(bridge)
    clean, corrupted = clean.to(device), corrupted.to(device)
    batch = clean.shape[0]
    with torch.no_grad():
        acts: dict[str, torch.Tensor] = {}
        with bridge.hooks(fwd_hooks=[(name, keep_into(acts, name)) for name in act_names]):
            clean_metric = metric(bridge(clean)).mean().item()
    clean_acts = acts
    grads = {name: 0.0 for name in grad_names}
    chunk = chunk or ig_steps
    for start in range(0, ig_steps, chunk):
        alphas = torch.arange(start, min(start + chunk, ig_steps), device=device) / ig_steps
        steps = len(alphas)
        acts, deltas = {}, {}
        hooks = [(name, _grad_hook(name, acts if name in act_names else None, deltas,
                                   name in grad_names, clean_acts[EMBED] if name == EMBED else None,
                                   alphas.repeat_interleave(batch))) for name in {*act_names, *grad_names}]
        with torch.enable_grad(), bridge.hooks(fwd_hooks=hooks):
            values = metric(bridge(corrupted.repeat(steps, 1)))
            found = torch.autograd.grad(values.sum(), [deltas[name] for name in grad_names])
        for name, grad in zip(grad_names, found):
            grads[name] = grads[name] + grad.view(steps, batch, *grad.shape[1:]).sum(0)
        if start == 0:  # alpha = 0: the corrupted run itself
            corrupted_acts = {name: acts[name][:batch] for name in act_names}
            corrupted_metric = values[:batch].mean().item()
    return _Run({name: clean_acts[name] - corrupted_acts[name] for name in act_names},
                {name: grad / ig_steps for name, grad in grads.items()}, clean_metric, corrupted_metric)


def keep_into(acts: dict[str, torch.Tensor], name: str):
    def hook(activation, hook):
        acts[name] = activation.detach()

    return hook


def _grad_hook(name: str, acts: dict | None, deltas: dict, wants_grad: bool, clean_embed, alphas):
    """A hook that moves the input embedding along the path (`clean_embed` given), keeps the
    activation (`acts` given), and adds a zero leaf whose gradient is the activation's."""
    def hook(activation, hook):
        if clean_embed is not None:
            target = clean_embed.repeat(len(alphas) // len(clean_embed), *[1] * (clean_embed.dim() - 1))
            activation = activation + alphas.view(-1, *[1] * (activation.dim() - 1)) * (target - activation)
        if acts is not None:
            acts[name] = activation.detach()
        if wants_grad:
            deltas[name] = torch.zeros_like(activation, requires_grad=True)
            activation = activation + deltas[name]
        return activation

    return hook


def per_node(tensor: torch.Tensor) -> torch.Tensor:
    """[batch, pos, d_model] as one node, [batch, pos, head, d_model] as one node per head."""
    return tensor[:, :, None] if tensor.dim() == 3 else tensor


@contextmanager
def edge_hooks(bridge) -> Iterator[None]:
    """The bridge with its per-head result, split q/k/v input and MLP input hooks on, then as it was."""
    cfg = bridge.cfg
    saved = cfg.use_attn_result, cfg.use_split_qkv_input, cfg.use_hook_mlp_in, cfg.use_attn_in
    try:
        bridge.set_use_attn_in(False)  # it excludes the split q/k/v input
        bridge.set_use_attn_result(True)
        bridge.set_use_split_qkv_input(True)
        bridge.set_use_hook_mlp_in(True)
        yield
    finally:
        bridge.set_use_attn_result(saved[0])
        bridge.set_use_split_qkv_input(saved[1])
        bridge.set_use_hook_mlp_in(saved[2])
        bridge.set_use_attn_in(saved[3])


def _check(clean: torch.Tensor, corrupted: torch.Tensor, ig_steps: int, chunk: int | None) -> None:
    if clean.dim() != 2 or clean.shape != corrupted.shape:
        raise ValueError(f"clean and corrupted tokens must have one [batch, pos] shape, not "
                         f"{tuple(clean.shape)} and {tuple(corrupted.shape)}")
    if not isinstance(ig_steps, int) or ig_steps < 1:
        raise ValueError(f"ig_steps must be an integer >= 1, not {ig_steps!r}")
    if chunk is not None and chunk < 1:
        raise ValueError(f"chunk must be >= 1 step, not {chunk!r}")
