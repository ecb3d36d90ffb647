"""The residual graph of a model, as edge attribution, circuits and their diff read it.

Writers put their output into the residual stream: the embedding, each attention head, each MLP.
Readers take their input from it: each query head's q input, each key-value head's k and v inputs,
each MLP's input, and the logits (the last residual stream). An edge is a writer read by a later
reader at the same position; masking it gives that reader the writer's corrupted output instead.

- **Grouped keys and values (GQA, MQA).** A key-value head computes one key and one value for its
  group of query heads, from one input: its k and v inputs are one reader each (`L0KV1.k`, the k input
  of key-value head 1), and masking an edge into it changes the keys of the whole group.
- **Parallel attention and MLP (GPT-NeoX, GPT-J).** Both read the residual stream entering the block,
  so an MLP sees no head of its own layer.
- **Normalised attention output (Gemma 2 and 3, OLMo 2).** The heads' summed result is normalised
  before it enters the residual stream, y = g ⊙ x / rms(x). A head writes its share of y: its result
  times g / rms(x), with the rms of the run at hand, so the heads' shares always sum to y.

>>> graph = ResidualGraph(n_layers=1, n_heads=2, n_kv_heads=1)
>>> [node.name for node in graph.writers], [node.name for node in graph.readers]
(['embed', 'L0H0', 'L0H1', 'MLP0'], ['L0H0.q', 'L0H1.q', 'L0KV0.k', 'L0KV0.v', 'MLP0', 'logits'])
>>> graph.mask.int()  # writer × reader: the MLP reads its layer's heads, the logits every writer
tensor([[1, 1, 1, 1, 1, 1],
        [0, 0, 0, 0, 1, 1],
        [0, 0, 0, 0, 1, 1],
        [0, 0, 0, 0, 0, 1]], dtype=torch.int32)
>>> ResidualGraph(n_layers=1, n_heads=2, n_kv_heads=1, parallel=True).mask[1:3, 4].tolist()
[False, False]
>>> {node.name: [graph.readers[r].name for r in rs] for node, rs in reader_inputs(graph.readers).items()}
{'L0H0': ['L0H0.q', 'L0KV0.k', 'L0KV0.v'], 'L0H1': ['L0H1.q', 'L0KV0.k', 'L0KV0.v'],
 'MLP0': ['MLP0'], 'logits': ['logits']}
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import einops
import torch
from jaxtyping import Bool, Float

from interp.bridge import agree, device_of
from training.vocabulary import Node

HookSlice = tuple[str, slice]  # a hook, and the writers or readers (in graph order) it holds


@dataclass(frozen=True)
class ResidualGraph:
    """The writers, readers and edges of a model of this shape (see the module docstring)."""

    n_layers: int
    n_heads: int
    n_kv_heads: int
    parallel: bool = False  # attention and MLP read the same residual stream
    post_norm: bool = False  # the attention output is normalised before it enters the stream

    @classmethod
    def of(cls, bridge) -> ResidualGraph:
        """The graph of a bridged model, from its config and TransformerLens's block layout."""
        cfg = bridge.cfg
        return cls(cfg.n_layers, cfg.n_heads, getattr(cfg, "n_key_value_heads", None) or cfg.n_heads,
                   bool(getattr(cfg, "parallel_attn_mlp", False)), hasattr(bridge.blocks[0], "ln1_post"))

    def __post_init__(self):
        if self.n_heads % self.n_kv_heads:
            raise ValueError(f"{self.n_heads} query heads do not split into {self.n_kv_heads} groups")

    @property
    def grouped(self) -> bool:
        """Whether key-value heads are shared by several query heads (GQA, MQA)."""
        return self.n_kv_heads != self.n_heads

    def kv(self, layer: int, kv_head: int, port: str) -> Node:
        """The k or v input of a key-value head: the head's own without grouping."""
        return Node.kv(layer, kv_head, port) if self.grouped else Node.attn(layer, kv_head, port)

    @functools.cached_property
    def writers(self) -> list[Node]:
        """The embedding, then per layer its heads and its MLP."""
        return [Node.embed()] + [node for layer in range(self.n_layers) for node in
                                 [*(Node.attn(layer, head) for head in range(self.n_heads)), Node.mlp(layer)]]

    @functools.cached_property
    def readers(self) -> list[Node]:
        """Per layer its heads' q inputs, its key-value heads' k then v inputs and its MLP; then the
        logits."""
        readers = []
        for layer in range(self.n_layers):
            readers += [Node.attn(layer, head, "q") for head in range(self.n_heads)]
            readers += [self.kv(layer, head, port) for port in "kv" for head in range(self.n_kv_heads)]
            readers.append(Node.mlp(layer))
        return [*readers, Node.logits()]

    @functools.cached_property
    def mask(self) -> Bool[torch.Tensor, "writer reader"]:
        """Which writer feeds which reader: every writer of an earlier layer, and for an MLP after its
        attention (not in parallel with it) its own layer's heads too."""
        def order(node: Node, reading: bool) -> int:  # 2 × layer, +1 for an MLP after its attention
            if node.kind == "embed":
                return -1
            if node.kind == "logits":
                return 2 * self.n_layers
            return 2 * node.layer + (node.kind == "mlp" and not (reading and self.parallel))

        writers = torch.tensor([order(node, False) for node in self.writers])
        readers = torch.tensor([order(node, True) for node in self.readers])
        return writers[:, None] < readers[None, :]

    def writer_hooks(self) -> list[HookSlice]:
        """Each writer hook with the writers it holds; a normalised attention output's heads are read
        from `blocks.L.hook_attn_out` (their results, kept at `attn.hook_result`, are scaled there)."""
        hooks = [("hook_embed", slice(0, 1))]
        for layer in range(self.n_layers):
            start = 1 + layer * (self.n_heads + 1)
            hooks += [(self.head_hook(layer), slice(start, start + self.n_heads)),
                      (f"blocks.{layer}.hook_mlp_out", slice(start + self.n_heads, start + self.n_heads + 1))]
        return hooks

    def head_hook(self, layer: int) -> str:
        """Where the heads' writes are complete: their results, or with a post-norm its output."""
        return f"blocks.{layer}.hook_attn_out" if self.post_norm else f"blocks.{layer}.attn.hook_result"

    def normalised_layer(self, hook: str) -> int | None:
        """The layer whose normalised attention output (its heads' writes) `hook` is, if it is one."""
        if self.post_norm and hook.startswith("blocks.") and hook.endswith(".hook_attn_out"):
            return int(hook.split(".")[1])
        return None

    def reader_hooks(self) -> list[HookSlice]:
        """Each reader hook with the readers it holds."""
        hooks, start = [], 0
        for layer in range(self.n_layers):
            for port, size in (("q", self.n_heads), ("k", self.n_kv_heads), ("v", self.n_kv_heads),
                               ("mlp", 1)):
                name = (f"blocks.{layer}.hook_mlp_in" if port == "mlp"
                        else f"blocks.{layer}.attn.hook_{port}_input")
                hooks.append((name, slice(start, start + size)))
                start += size
        return [*hooks, (f"blocks.{self.n_layers - 1}.hook_resid_post", slice(start, start + 1))]

    def kept_hooks(self) -> list[str]:
        """Every hook whose activation `writes` needs."""
        names = [name for name, _ in self.writer_hooks()]
        if self.post_norm:
            names += [f"blocks.{layer}.attn.hook_result" for layer in range(self.n_layers)]
        return names


def reader_inputs(readers: list[Node]) -> dict[Node, list[int]]:
    """Each reading component (a query head, an MLP, the logits) and the indices of the readers that
    feed it: a query head is fed by its q input and by its key-value head's k and v inputs."""
    out: dict[Node, list[int]] = {}
    for r, reader in enumerate(readers):
        if reader.kind != "kv":
            out.setdefault(reader.component, []).append(r)
    for r, reader in enumerate(readers):
        if reader.kind == "kv":
            layer = [node for node in readers if node.layer == reader.layer]
            group = sum(node.port == "q" for node in layer) // sum(node.port == reader.port for node in layer)
            for head in range(reader.head * group, (reader.head + 1) * group):
                out[Node.attn(reader.layer, head)].append(r)
    return {node: sorted(rs) for node, rs in out.items()}


def head_writes(result: Float[torch.Tensor, "batch pos head d_model"],
                attn_out: Float[torch.Tensor, "batch pos d_model"], gain: Float[torch.Tensor, " d_model"]
                ) -> Float[torch.Tensor, "batch pos head d_model"]:
    """Each head's share of a normalised attention output y = g ⊙ x / rms(x), x the heads' summed
    result: result × g / rms(x), with 1 / rms(x) fitted from x and y by least squares per position."""
    result, attn_out = result.float(), attn_out.float()  # in float32 whatever the model's dtype
    x = gain * result.sum(-2)
    scale = (attn_out * x).sum(-1, keepdim=True) / (x * x).sum(-1, keepdim=True).clamp_min(1e-30)
    return einops.einsum(scale * gain, result, "batch pos d, batch pos head d -> batch pos head d")


def writes(graph: ResidualGraph, acts: dict[str, torch.Tensor], gains: list[torch.Tensor] | None
           ) -> Float[torch.Tensor, "batch pos writer d_model"]:
    """Every writer's output, in graph order, from the activations at `graph.kept_hooks()`."""
    out = []
    for name, _ in graph.writer_hooks():
        layer = graph.normalised_layer(name)
        if layer is not None:
            out.append(head_writes(acts[f"blocks.{layer}.attn.hook_result"], acts[name], gains[layer]))
        else:
            out.append(per_node(acts[name]))
    return torch.cat(out, dim=2)


def post_norm_gains(bridge, graph: ResidualGraph) -> list[torch.Tensor] | None:
    """Each layer's post-attention norm gain g (its output on a large constant input), or None without
    a post-norm; checked once on a random input to be an RMSNorm, y = g ⊙ x / rms(x)."""
    if not graph.post_norm:
        return None
    d_model, device = bridge.cfg.d_model, device_of(bridge)
    gains = []
    with torch.no_grad():
        for block in bridge.blocks:
            norm = getattr(block.ln1_post, "original_component", block.ln1_post)
            dtype = next(norm.parameters()).dtype
            gain = norm(torch.full((1, d_model), 1e3, device=device, dtype=dtype))[0].float()
            x = torch.randn(2, 3, 2, d_model, generator=torch.Generator().manual_seed(0)).to(device, dtype)
            y = norm(x.sum(-2))
            if not agree(head_writes(x, y, gain).sum(-2), y):  # within the model dtype's rounding
                raise ValueError("this model's attention output goes through a norm that is not an RMSNorm: "
                                 "its heads have no separate writes, so it has no edge graph")
            gains.append(gain)
    return gains


def per_node(tensor: Float[torch.Tensor, "batch pos *head d_model"]
             ) -> Float[torch.Tensor, "batch pos node d_model"]:
    """[batch, pos, d_model] as one node, [batch, pos, head, d_model] as one node per head."""
    return einops.rearrange(tensor, "batch pos d -> batch pos 1 d") if tensor.dim() == 3 else tensor


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
