"""Tiny random-init models of the architecture families researchers use, built from their `transformers`
configs: 2 layers, d_model 64, 4 query heads (2 key-value heads where the family groups them, 1 for
Gemma's multi-query attention), an embedding larger than the tokenizer. Equivalence tests run every
analysis on each; random weights are enough to compare numbers with a reference.

>>> model = family_model("qwen3", vocab_size=100)
>>> type(model).__name__, model.config.num_key_value_heads, model.config.architectures
('Qwen3ForCausalLM', 2, ['Qwen3ForCausalLM'])
"""

from __future__ import annotations

import torch
from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedModel

SHAPE = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4)
GQA = dict(num_key_value_heads=2)
SLIDING = dict(sliding_window=4, layer_types=["sliding_attention", "full_attention"])  # prompts are longer
FAMILIES: dict[str, tuple[str, dict, str]] = {  # name: model type, config, what it brings
    "gpt2": ("gpt2", dict(n_embd=64, n_layer=2, n_head=4), "learned positions, LayerNorm, tied embeddings"),
    "llama": ("llama", SHAPE | dict(rope_scaling={"rope_type": "linear", "factor": 2.0}),
              "multi-head attention, scaled rotary positions"),
    "llama-gqa": ("llama", SHAPE | GQA, "grouped-query attention"),
    "mistral": ("mistral", SHAPE | GQA | dict(sliding_window=8), "GQA, sliding-window attention"),
    "qwen2": ("qwen2", SHAPE | GQA, "GQA, q/k/v biases"),
    "qwen3": ("qwen3", SHAPE | GQA | dict(head_dim=16), "GQA, q/k norms"),
    "gemma": ("gemma", SHAPE | dict(num_key_value_heads=1, head_dim=16),
              "multi-query attention, scaled embedding, tied embeddings"),
    "gemma2": ("gemma2", SHAPE | GQA | SLIDING | dict(head_dim=16),
               "normalised attention and MLP outputs, logit softcapping, sliding-window layers"),
    "gemma3": ("gemma3_text", SHAPE | GQA | SLIDING | dict(head_dim=16),
               "normalised outputs, q/k norms, local and global rotary bases"),
    "phi3": ("phi3", SHAPE | GQA | dict(pad_token_id=0), "fused q/k/v and gate/up projections"),
    "olmo2": ("olmo2", SHAPE | GQA, "normalised outputs with no input norm, q/k norms"),
    "gpt_neox": ("gpt_neox", SHAPE, "parallel attention and MLP, partial rotary positions"),
    "stablelm": ("stablelm", SHAPE | GQA, "partial rotary positions, LayerNorm"),
    "granite": ("granite", SHAPE | GQA | dict(residual_multiplier=0.5, embedding_multiplier=2.0,
                                              attention_multiplier=0.3, logits_scaling=2.0),
                "residual, embedding, attention and logit multipliers"),
}


def family_model(name: str, vocab_size: int, *, seed: int = 0, dtype: torch.dtype = torch.float32
                 ) -> PreTrainedModel:
    """A random-init model of one of `FAMILIES`, with `vocab_size` logits, in eval mode."""
    if name not in FAMILIES:
        raise ValueError(f"no family {name!r}; the families are {', '.join(FAMILIES)}")
    model_type, config, _ = FAMILIES[name]
    config = AutoConfig.for_model(model_type, vocab_size=vocab_size, attn_implementation="eager", **config)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config).to(dtype).eval()
    model.config.architectures = [type(model).__name__]
    return model
