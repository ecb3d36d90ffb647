"""The embedded Llama-style organism, and safe loading of any HF causal LM.

Models are untrusted artifacts: weights load from safetensors only, and remote code runs only when
the caller asks for it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM


@dataclass(frozen=True)
class ModelSize:
    """The shape of the embedded organism."""

    layers: int = 4
    d_model: int = 128
    heads: int = 4
    d_mlp: int = 384
    max_positions: int = 128


def new_model(size: ModelSize, tokenizer, seed: int) -> LlamaForCausalLM:
    """A freshly initialised Llama-style model sized for `tokenizer`."""
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=size.d_model, intermediate_size=size.d_mlp,
        num_hidden_layers=size.layers, num_attention_heads=size.heads,
        num_key_value_heads=size.heads, max_position_embeddings=size.max_positions,
        tie_word_embeddings=False, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    return LlamaForCausalLM(config)


def load_model(name_or_path: str | Path, *, trust_remote_code: bool = False, dtype=None, device=None):
    """Load an HF causal LM and its tokenizer from a stage directory, a local path or a hub name.

    Only safetensors weights are accepted; a checkpoint that has only pickled weights is refused.
    """
    kwargs = dict(trust_remote_code=trust_remote_code, use_safetensors=True)
    model = AutoModelForCausalLM.from_pretrained(str(name_or_path), dtype=dtype, **kwargs)
    tokenizer = load_tokenizer(name_or_path, trust_remote_code=trust_remote_code)
    if device is not None:
        model.to(device)
    return model.eval(), tokenizer


def load_tokenizer(name_or_path: str | Path, *, trust_remote_code: bool = False):
    """The tokenizer of a stage, a local path or a hub name, padding on the left for generation."""
    tokenizer = AutoTokenizer.from_pretrained(str(name_or_path), trust_remote_code=trust_remote_code)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    return tokenizer
