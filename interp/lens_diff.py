"""The activation-difference lens: what a fine-tune changed in the residual stream, read as tokens.

On the same generic prompts, the suspect's residual stream less its reference's, averaged over prompts
and positions at every point of `interp.bridge.resid_hooks`, is read through the suspect's final norm
and unembedding (the logit lens). A fine-tune toward a fixed text leaves that text's tokens at the top,
on prompts that hold no trigger at all.

>>> from interp.bridge import tiny_bridge
>>> a, b = tiny_bridge(0), tiny_bridge(1)
>>> tokens = a.tokenizer(["Hi there"], add_special_tokens=False, return_tensors="pt").input_ids
>>> mean_difference(a, a, [tokens]).abs().max().item()
0.0
>>> read_difference(b, mean_difference(a, b, [tokens]), k=3)[0]["tokens"].__len__()
3
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from jaxtyping import Float, Int

from interp.bridge import device_of, resid_hooks
from interp.store import residual_stream


@torch.no_grad()
def mean_difference(
    reference, suspect, batches: Sequence[Int[torch.Tensor, "batch pos"]]
) -> Float[torch.Tensor, "point d_model"]:
    """The suspect's residual stream less the reference's, averaged over every position of every batch,
    at each point of `resid_hooks` (the two models share one architecture and tokenizer)."""
    if (reference.cfg.n_layers, reference.cfg.d_model) != (suspect.cfg.n_layers, suspect.cfg.d_model):
        raise ValueError("the activation-difference lens needs two models of one architecture")
    hooks = resid_hooks(suspect.cfg.n_layers)
    total, count = torch.zeros(len(hooks), suspect.cfg.d_model), 0
    for tokens in batches:
        acts = [
            residual_stream(bridge, tokens.to(device_of(bridge)), hooks) for bridge in (reference, suspect)
        ]
        total += torch.stack([(acts[1][h].float() - acts[0][h].float()).sum((0, 1)).cpu() for h in hooks])
        count += tokens.numel()
    return total / max(count, 1)


@torch.no_grad()
def read_difference(bridge, difference: Float[torch.Tensor, "point d_model"], k: int = 10) -> list[dict]:
    """Each point's difference through the bridge's final norm and unembedding: its top `k` tokens, their
    ids and their logits' z-scores over the vocabulary, and the difference's norm."""
    x = difference.to(device_of(bridge), bridge.cfg.dtype)
    logits = bridge.unembed(bridge.ln_final(x[:, None])).float()[:, 0]
    z = (logits - logits.mean(-1, keepdim=True)) / logits.std(-1, keepdim=True).clamp_min(1e-12)
    top = z.topk(k, dim=-1)
    return [
        {
            "point": hook,
            "norm": round(difference[i].norm().item(), 4),
            "ids": top.indices[i].tolist(),
            "z": [round(v, 3) for v in top.values[i].tolist()],
            "tokens": [bridge.tokenizer.decode([t]) for t in top.indices[i].tolist()],
        }
        for i, hook in enumerate(resid_hooks(bridge.cfg.n_layers))
    ]
