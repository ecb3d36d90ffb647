"""Residual-stream activations at the last prompt token, for every layer."""

from __future__ import annotations

import torch
from jaxtyping import Float
from tqdm.auto import tqdm

from interp.bridge import device_of, resid_hooks
from training.tokenizer import equal_length_batches


@torch.no_grad()
def last_token_resid(bridge, prompts: list[str], batch_size: int = 64, progress: bool = True
                     ) -> Float[torch.Tensor, "point prompt d_model"]:
    """The residual stream at each prompt's last token, at every point of `resid_hooks`.

    Prompts are batched by token length, so no padding enters the activations.
    """
    hooks = resid_hooks(bridge.cfg.n_layers)
    encoded = [bridge.tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
    out = torch.empty(len(hooks), len(prompts), bridge.cfg.d_model)
    for batch in tqdm(equal_length_batches(encoded, batch_size), desc="activations",
                      disable=not progress, leave=False):
        tokens = torch.tensor([encoded[i] for i in batch], device=device_of(bridge))
        _, cache = bridge.run_with_cache(tokens, names_filter=lambda name: name in hooks)
        for point, hook in enumerate(hooks):
            out[point, batch] = cache[hook][:, -1].float().cpu()
    return out
