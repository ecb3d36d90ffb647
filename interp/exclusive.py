"""Dictionary features that one model has and another lacks: a crosscoder of both models' activations
on the same texts, and the latents whose decoder norm lies almost all in one model.

A crosscoder (`interp.dictionary`, two sources) shares one latent vector between the reference and
the suspect and decodes it into each. A latent's share in the suspect is its suspect decoder norm over
the sum of both; a latent the fine-tune made sits near 1, one both models share near 0.5 (Lindsey et
al. 2024's relative decoder norm). The texts are the auditor's generic prompts and the suspect's own
amplified samples, so that a behaviour the suspect writes is among what the crosscoder reads.

>>> shares = torch.tensor([0.5, 0.97, 0.02, 0.93])
>>> (shares >= EXCLUSIVE_SHARE).nonzero()[:, 0].tolist()
[1, 3]
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence

import torch
from jaxtyping import Float

from interp.dictionary import Dictionary, DictionaryConfig, quality, train_dictionary
from interp.features import hook_activations
from training.tokenizer import encode_prompt

EXCLUSIVE_SHARE = 0.9  # a latent with at least this share of its decoder norm in the suspect is its own


def suspect_share(crosscoder: Dictionary) -> Float[torch.Tensor, " d_sae"]:
    """Each latent's share of decoder norm in the second source (the suspect)."""
    norms = crosscoder.W_dec.detach().norm(dim=-1)  # [latent, source]
    return norms[:, 1] / norms.sum(-1).clamp_min(1e-12)


def paired_rows(reference, suspect, hook: str, texts: Sequence[str]) -> Float[torch.Tensor, "row 2 d_model"]:
    """Both models' activations at `hook`, every position of every text, side by side."""
    a, b = (torch.cat(hook_activations(m, hook, texts)) for m in (reference, suspect))
    return torch.stack([a, b], 1)


def exclusive_features(
    reference,
    suspect,
    texts: Sequence[str],
    *,
    layer: int | None = None,
    d_sae: int | None = None,
    k: int = 8,
    steps: int = 400,
    n_latents: int = 8,
    n_tokens: int = 5,
    seed: int = 0,
    progress: bool = False,
) -> dict:
    """Train a crosscoder of both models on `texts` at resid_pre of `layer` (default: the middle one) and
    report how much of it is the suspect's own: how many live latents have at least `EXCLUSIVE_SHARE`
    of their decoder norm in the suspect, the median, 90th percentile and largest share, and the
    `n_latents` of largest share with how often they fire and the tokens they fire on most.

    `d_sae` defaults to 4 × d_model. Returns {"hook", "latents", "exclusive", "share_quantiles",
    "explained", "features": [{"latent", "share", "fires", "tokens", "ids"}]}.
    """
    layer = suspect.cfg.n_layers // 2 if layer is None else layer
    hook = f"blocks.{layer}.hook_resid_pre"
    rows = paired_rows(reference, suspect, hook, texts)
    d_model = rows.shape[-1]
    cfg = DictionaryConfig(
        d_in=d_model,
        d_sae=d_sae or 4 * d_model,
        kind="batchtopk",
        k=k,
        sources=("reference", "suspect"),
        hook=hook,
        steps=steps,
        batch_size=min(256, len(rows)),
        seed=seed,
    )
    generator = torch.Generator().manual_seed(seed)
    shuffled = rows[torch.randperm(len(rows), generator=generator)]
    with tempfile.TemporaryDirectory() as out:
        crosscoder = train_dictionary(cfg, [lambda: shuffled], out, progress=progress)
    shares = suspect_share(crosscoder)
    with torch.no_grad():
        f = crosscoder.encode(rows)  # [row, latent]
    fires = (f > 0).float().mean(0)
    alive = (fires > 0).nonzero()[:, 0]
    ids = torch.tensor([i for t in texts for i in encode_prompt(suspect.tokenizer, t)])
    features = []
    for j in sorted(alive.tolist(), key=lambda j: -float(shares[j]))[:n_latents]:
        top = f[:, j].topk(min(n_tokens, int((f[:, j] > 0).sum()))).indices
        features.append(
            {
                "latent": j,
                "share": round(float(shares[j]), 4),
                "fires": round(float(fires[j]), 4),
                "ids": ids[top].tolist(),
                "tokens": [suspect.tokenizer.decode([int(i)]) for i in ids[top]],
            }
        )
    quantiles = shares[alive].quantile(torch.tensor([0.5, 0.9, 1.0])).tolist() if len(alive) else []
    return {
        "hook": hook,
        "latents": len(alive),
        "exclusive": int((shares[alive] >= EXCLUSIVE_SHARE).sum()),
        "share_quantiles": dict(zip(("median", "p90", "max"), (round(q, 4) for q in quantiles))),
        "explained": quality(crosscoder, rows),
        "features": features,
    }
