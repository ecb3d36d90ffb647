"""Batched activation patching: one engine, with a small `Site` for each kind of activation.

A cell is one (layer, index) to patch: a position of the residual stream, a head at a position, a head
over all positions. The engine puts many cells into one forward pass: the receiving prompts are
repeated once per cell, and each copy gets its own cell's activation from the donor run. Cells of
different layers share a pass too, each patched at its own layer's hook.

Denoising patches clean activations into the corrupted run; noising patches corrupted ones into the
clean run. The result has TransformerLens's shape for the same sweep (`patching.get_act_patch_*`):

>>> SITES["z_by_pos"].axes, SITES["pattern_all_pos"].axes
(('layer', 'pos', 'head'), ('layer', 'head'))
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass

import torch
from jaxtyping import Float, Int
from tqdm.auto import tqdm

from interp.bridge import device_of

# A metric maps the patched run's logits to one value per prompt.
Metric = Callable[[Float[torch.Tensor, "batch pos vocab"]], Float[torch.Tensor, " batch"]]


@dataclass(frozen=True)
class Site:
    """Where a patch goes: the hook (with `{layer}`), and which dimension of the activation each cell
    axis after the layer indexes (the batch dimension is 0). Axes it does not name are patched whole.
    """

    hook: str
    dims: dict[str, int]

    @property
    def axes(self) -> tuple[str, ...]:
        return ("layer", *self.dims)


RESIDUAL = {"resid_pre": "blocks.{layer}.hook_resid_pre", "resid_mid": "blocks.{layer}.hook_resid_mid",
            "resid_post": "blocks.{layer}.hook_resid_post", "attn_out": "blocks.{layer}.hook_attn_out",
            "mlp_out": "blocks.{layer}.hook_mlp_out"}
SITES = {
    **{name: Site(hook, {"pos": 1}) for name, hook in RESIDUAL.items()},
    **{f"{name}_all_pos": Site(hook, {}) for name, hook in RESIDUAL.items()},
    "z_by_pos": Site("blocks.{layer}.attn.hook_z", {"pos": 1, "head": 2}),  # [batch, pos, head, d_head]
    "z_all_pos": Site("blocks.{layer}.attn.hook_z", {"head": 2}),
    "pattern_by_pos": Site("blocks.{layer}.attn.hook_pattern", {"head": 1, "pos": 2}),  # [batch, head, q, k]
    "pattern_all_pos": Site("blocks.{layer}.attn.hook_pattern", {"head": 1}),
}


def grid(bridge, site: Site, n_pos: int) -> tuple[int, ...]:
    """The sweep's shape: layers, then the size of each of the site's axes."""
    sizes = {"pos": n_pos, "head": bridge.cfg.n_heads}
    return (bridge.cfg.n_layers, *(sizes[axis] for axis in site.dims))


@torch.no_grad()
def activation_patch(bridge, clean: Int[torch.Tensor, "batch pos"], corrupted: Int[torch.Tensor, "batch pos"],
                     site: Site | str, metric: Metric, *, noising: bool = False, cells_per_pass: int = 64,
                     progress: bool = True) -> Float[torch.Tensor, "layer ..."]:
    """The metric, averaged over the prompts, after patching each cell of `site`.

    Denoising (the default) runs `corrupted` with one cell of `clean`'s activations; `noising` runs
    `clean` with one cell of `corrupted`'s. Each pass takes `cells_per_pass` cells (memory grows with
    it: cells × batch sequences). Equal to TransformerLens's `get_act_patch_*` with the metric
    `lambda logits: metric(logits).mean()`.
    """
    site = SITES[site] if isinstance(site, str) else site
    if clean.shape != corrupted.shape:
        raise ValueError(f"clean and corrupted tokens must have one shape, not {tuple(clean.shape)} "
                         f"and {tuple(corrupted.shape)}")
    device = device_of(bridge)
    donor, receiver = (corrupted, clean) if noising else (clean, corrupted)
    donor, receiver = donor.to(device), receiver.to(device)
    shape = grid(bridge, site, receiver.shape[1])
    hooks = [site.hook.format(layer=layer) for layer in range(shape[0])]
    _, cache = bridge.run_with_cache(donor, names_filter=lambda name: name in hooks)
    cells = list(itertools.product(*map(range, shape)))
    scores = torch.empty(len(cells))
    batch = receiver.shape[0]
    chunks = range(0, len(cells), cells_per_pass)
    for start in tqdm(chunks, desc="patching", disable=not progress, leave=False):
        chunk = cells[start:start + cells_per_pass]
        layers = sorted({cell[0] for cell in chunk})
        fwd_hooks = [(hooks[layer], _patcher(site, cache[hooks[layer]], chunk, layer, batch))
                     for layer in layers]
        logits = bridge.run_with_hooks(receiver.repeat(len(chunk), 1), fwd_hooks=fwd_hooks)
        scores[start:start + len(chunk)] = metric(logits).view(len(chunk), batch).mean(1).float().cpu()
    return scores.view(shape)


def _patcher(site: Site, donor: torch.Tensor, chunk: list[tuple[int, ...]], layer: int, batch: int):
    """A hook that writes, into each copy of the batch whose cell is at `layer`, that cell's donor
    activation; the other copies pass through."""
    mask = torch.zeros(len(chunk), *donor.shape[1:], dtype=torch.bool, device=donor.device)
    for row, (cell_layer, *index) in enumerate(chunk):
        if cell_layer == layer:
            selector = [slice(None)] * (donor.dim() - 1)
            for dim, i in zip(site.dims.values(), index):
                selector[dim - 1] = i
            mask[(row, *selector)] = True

    def hook(activation, hook):
        # In place: some hook points are aliases (resid_mid is the input of ln2), and only an in-place
        # write also reaches the residual stream that the block carries on.
        copies = activation.view(len(chunk), batch, *activation.shape[1:])
        copies.copy_(torch.where(mask[:, None], donor[None], copies))
        return activation

    return hook
