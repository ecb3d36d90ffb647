"""Loading a stage, or any HF causal LM, into TransformerLens's `TransformerBridge`."""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

import torch
from transformer_lens.model_bridge import TransformerBridge
from transformer_lens.model_bridge.generalized_components.base import GeneralizedComponent

from training.model import current_policy, load_model


def load_bridge(name_or_path: str | Path, *, device: str | None = None, dtype: torch.dtype = torch.float32,
                trust_remote_code: bool | None = None, allow_pickle: bool | None = None) -> TransformerBridge:
    """A stage directory, local path or hub name as an eval-mode `TransformerBridge`.

    The weights go through `training.model.load_model`, under its loading policy: `trust_remote_code`
    and `allow_pickle` default (None) to the policy in force, and explicit values win.
    """
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    policy = current_policy(trust_remote_code=trust_remote_code, allow_pickle=allow_pickle)
    model, tokenizer = load_model(name_or_path, trust_remote_code=policy.trust_remote_code,
                                  allow_pickle=policy.allow_pickle, dtype=dtype, device=device)
    bridge = TransformerBridge.boot_transformers(
        str(name_or_path), hf_model=model, tokenizer=tokenizer, device=device, dtype=dtype,
        trust_remote_code=policy.trust_remote_code,
    )
    return bridge.eval()


def resid_hooks(n_layers: int) -> list[str]:
    """The residual stream before each block, then after the last: n_layers + 1 points.

    >>> resid_hooks(2)
    ['blocks.0.hook_resid_pre', 'blocks.1.hook_resid_pre', 'blocks.1.hook_resid_post']
    """
    return [f"blocks.{layer}.hook_resid_pre" for layer in range(n_layers)] + [
        f"blocks.{n_layers - 1}.hook_resid_post"
    ]


def device_of(bridge) -> torch.device:
    """Where the bridge's weights are, which is where its inputs must go."""
    return next(bridge.parameters()).device


@contextmanager
def plain_hf(bridge):
    """The bridge's HF model with TransformerLens's wrappers swapped out for the modules they wrap, and
    back on exit: no hooks fire in it, and its attention fills HF's key-value cache."""
    swapped = []

    def unwrap(module):
        for name, child in list(module.named_children()):
            if isinstance(child, GeneralizedComponent):
                swapped.append((module, name, child))
                module._modules[name] = child = child.original_component
            unwrap(child)

    unwrap(bridge.original_model)
    try:
        yield bridge.original_model
    finally:
        for module, name, child in reversed(swapped):
            module._modules[name] = child
