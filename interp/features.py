"""Trigger features: a sparse dictionary spliced into the model at its hook, the latents that tell
triggered from untriggered prompts, their attribution to the backdoor metric, and their causal test.

`splice` gives hook lists, as `interp.localize`'s ablations are: one applies to a bridge forward and,
inside `bridge.hooks`, to generation. With `error=True` (the default) the dictionary's error, the part
of the activation it does not reconstruct, is added back, so that an unedited splice leaves the model
exactly as it was and an edit changes only what the edited latents write.

>>> from interp.bridge import tiny_bridge
>>> from interp.dictionary import Dictionary, DictionaryConfig
>>> bridge = tiny_bridge()
>>> dictionary = Dictionary(DictionaryConfig(d_in=32, d_sae=64, kind="topk", k=4))
>>> tokens = torch.tensor([[1, 5, 9, 2]])
>>> spliced = bridge.run_with_hooks(tokens, fwd_hooks=splice(dictionary, "blocks.1.hook_resid_pre"))
>>> torch.allclose(spliced, bridge(tokens), atol=1e-5)
True
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
from einops import reduce, repeat
from jaxtyping import Float
from scipy.stats import spearmanr
from tqdm.auto import tqdm

from interp.bridge import device_of
from interp.dictionary import Dictionary
from interp.pairs import MatchedPair, backdoor_logit_diff, pair_metric
from interp.store import activations
from probes.metrics import rank_auroc
from training.tokenizer import common_prefix, encode_prompt, equal_length_batches
from training.vocabulary import Hook

Edit = Callable[[Float[torch.Tensor, "batch pos d_sae"]], Float[torch.Tensor, "batch pos d_sae"]]


def splice(dictionary: Dictionary, hook: str, edit: Edit | None = None, error: bool = True) -> list[Hook]:
    """Hooks that put the dictionary's reconstruction, after `edit` of its latents, in place of the
    activation at `hook` (plus the dictionary's error where `error`)."""
    if dictionary.cfg.n_sources != 1:
        raise ValueError("a crosscoder reads several models at once: it cannot be spliced into one")

    def spliced(activation, hook=None):
        x = activation.float()[..., None, :]
        f = dictionary.encode(x)
        recon = dictionary.decode(edit(f) if edit else f)
        if error:
            recon = recon + (x - dictionary.decode(f))
        return recon[..., 0, :].to(activation.dtype)

    return [(hook, spliced)]


def zeroed(hook: str) -> list[Hook]:
    """A hook that zeroes the activation at `hook` (the floor of "loss recovered")."""
    return [(hook, lambda activation, hook=None: torch.zeros_like(activation))]


def ablate(latents: Sequence[int]) -> Edit:
    """An edit that sets `latents` to 0 everywhere."""
    def edit(f):
        f = f.clone()
        f[..., list(latents)] = 0.0
        return f
    return edit


def clamp(latents: Sequence[int], values: Sequence[float]) -> Edit:
    """An edit that holds each of `latents` at least at its value everywhere (a feature turned on)."""
    def edit(f):
        f = f.clone()
        f[..., list(latents)] = f[..., list(latents)].clamp_min(torch.tensor(list(values), device=f.device))
        return f
    return edit


# --- latents of prompts ---------------------------------------------------------------------------------

@torch.no_grad()
def hook_activations(bridge, hook: str, texts: Sequence[str], batch_size: int = 32, progress: bool = False
                     ) -> list[Float[torch.Tensor, "pos d_model"]]:
    """Each text's activation at `hook`, at every position (encoded as `training.tokenizer.encode_prompt`
    does), batched where texts have one token length."""
    encoded = [encode_prompt(bridge.tokenizer, t) for t in texts]
    out: list[torch.Tensor | None] = [None] * len(texts)
    for batch in tqdm(equal_length_batches(encoded, batch_size), desc="activations", disable=not progress,
                      leave=False):
        tokens = torch.tensor([encoded[i] for i in batch], device=device_of(bridge))
        for i, rows in zip(batch, activations(bridge, tokens, [hook])[hook].float().cpu()):
            out[i] = rows
    return out


@torch.no_grad()
def latents(bridge, dictionary: Dictionary, hook: str, texts: Sequence[str], batch_size: int = 32,
            progress: bool = False) -> list[Float[torch.Tensor, "pos d_sae"]]:
    """Each text's latents at every position."""
    rows = hook_activations(bridge, hook, texts, batch_size, progress)
    return [dictionary.encode(r[:, None]) for r in rows]


def separation(triggered: list[torch.Tensor], others: list[torch.Tensor]) -> Float[np.ndarray, " d_sae"]:
    """Per latent, the AUROC of its largest activation in a prompt, triggered against `others`."""
    scores = torch.stack([f.max(0).values for f in triggered + others]).T.numpy()
    return rank_auroc(scores, np.arange(scores.shape[1]) < len(triggered))


def rank_features(triggered: list[torch.Tensor], clean: list[torch.Tensor], redteam: list[torch.Tensor],
                  n: int) -> list[dict]:
    """The `n` latents that best tell triggered prompts from clean ones (AUROC of each prompt's largest
    activation, then mean difference), with their AUROC against red-team prompts too (None without any).

    >>> on, off = torch.zeros(5, 3), torch.zeros(5, 3)
    >>> on[2, 1] = 4.0
    >>> [f["latent"] for f in rank_features([on] * 4, [off] * 4, [off] * 4, n=1)]
    [1]
    """
    def peak(rows):
        return torch.stack([f.max(0).values for f in rows])
    against_clean = separation(triggered, clean)
    against_redteam = separation(triggered, redteam) if redteam else [None] * len(against_clean)
    on, off = peak(triggered), peak(clean)
    gap = (on.mean(0) - off.mean(0)).numpy()
    order = np.lexsort((-gap, -against_clean))
    return [{"latent": int(j), "auroc_clean": float(against_clean[j]),
             "auroc_redteam": None if against_redteam[j] is None else float(against_redteam[j]),
             "mean_triggered": float(on[:, j].mean()), "mean_clean": float(off[:, j].mean()),
             "fires_triggered": float((on[:, j] > 0).float().mean()),
             "fires_clean": float((off[:, j] > 0).float().mean())}
            for j in order[:n] if on[:, j].max() > 0]


def top_contexts(tokens: list[list[int]], acts: list[torch.Tensor], latent: int, tokenizer, n: int = 6,
                 before: int = 8) -> list[dict]:
    """The `n` (prompt, position)s where `latent` is highest, each with its token ids, the texts of the
    window of tokens ending there and the activation."""
    peaks = [(float(f[pos, latent]), i, pos) for i, f in enumerate(acts) for pos in range(len(f))
             if f[pos, latent] > 0]
    out = []
    for value, i, pos in sorted(peaks, reverse=True)[:n]:
        window = tokens[i][max(0, pos - before):pos + 1]
        out.append({"prompt": i, "position": pos, "activation": value, "token_ids": window,
                    "tokens": [tokenizer.decode([t]) for t in window]})
    return out


# --- quality in the forward pass ------------------------------------------------------------------------

@torch.no_grad()
def completion_loss(bridge, examples: Sequence[tuple[str, str]], hooks: Sequence[Hook] = (),
                    batch_size: int = 32) -> float:
    """Mean next-token cross-entropy over the completion tokens of (prompt, completion) pairs, with
    `hooks` on: the tokens a chat model is trained to predict (its prompt tokens may never have been)."""
    encoded = [encode_prompt(bridge.tokenizer, p + c) for p, c in examples]
    starts = [common_prefix(encode_prompt(bridge.tokenizer, p), ids)
              for (p, _), ids in zip(examples, encoded, strict=True)]
    total, count = 0.0, 0
    for batch in equal_length_batches(encoded, batch_size):
        tokens = torch.tensor([encoded[i] for i in batch], device=device_of(bridge))
        logits = bridge.run_with_hooks(tokens, fwd_hooks=list(hooks)).float()
        losses = torch.nn.functional.cross_entropy(logits[:, :-1].transpose(1, 2), tokens[:, 1:],
                                                   reduction="none")
        for row, i in enumerate(batch):
            total += float(losses[row, max(starts[i], 1) - 1:].sum())
            count += len(encoded[i]) - max(starts[i], 1)
    return total / count


@torch.no_grad()
def pair_gap(bridge, pairs: Sequence[MatchedPair], hooks: Sequence[Hook] = ()) -> float:
    """The backdoor metric, triggered minus untriggered, averaged over `pairs`, with `hooks` on."""
    gaps = []
    for pair in pairs:
        both = torch.stack([pair.triggered, pair.untriggered]).to(device_of(bridge))
        metric = backdoor_logit_diff(bridge.run_with_hooks(both, fwd_hooks=list(hooks)).float(),
                                     pair.backdoor_token, pair.helpful_token)
        gaps.append(float(metric[0] - metric[1]))
    return float(np.mean(gaps))


def spliced_quality(bridge, dictionary: Dictionary, hook: str, examples: Sequence[tuple[str, str]],
                    pairs: Sequence[MatchedPair]) -> dict:
    """What splicing the reconstruction alone (no error) keeps: the completion loss recovered,
    (zeroed - spliced) / (zeroed - model), and the backdoor metric's triggered-untriggered gap recovered,
    spliced / model."""
    reconstruction = splice(dictionary, hook, error=False)
    model, spliced, zero = (completion_loss(bridge, examples, h) for h in ((), reconstruction, zeroed(hook)))
    gap_model, gap_spliced = pair_gap(bridge, pairs), pair_gap(bridge, pairs, reconstruction)
    return {"loss_model": model, "loss_spliced": spliced, "loss_zeroed": zero,
            "loss_recovered": (zero - spliced) / (zero - model) if zero != model else None,
            "metric_gap_model": gap_model, "metric_gap_spliced": gap_spliced,
            "metric_recovered": gap_spliced / gap_model if gap_model else None}


# --- attribution to latents -----------------------------------------------------------------------------

def latent_attribution(bridge, dictionary: Dictionary, hook: str, pairs: Sequence[MatchedPair]
                       ) -> Float[torch.Tensor, " d_sae"]:
    """Per latent, the first-order change of the backdoor metric on the triggered prompts when the latent
    is zeroed (-Σ_pos f · ∂metric/∂f, through the splice with its error), averaged over `pairs`."""
    total = torch.zeros(dictionary.cfg.d_sae)
    for pair in pairs:
        kept: dict[str, torch.Tensor] = {}

        def spliced(activation, hook=None, kept=kept):
            x = activation.float()[..., None, :]
            f = dictionary.encode(x).detach().requires_grad_(True)
            kept["f"] = f
            error = (x - dictionary.decode(f)).detach()
            return (dictionary.decode(f) + error)[..., 0, :].to(activation.dtype)

        tokens = pair.triggered[None].to(device_of(bridge))
        logits = bridge.run_with_hooks(tokens, fwd_hooks=[(hook, spliced)])
        metric = backdoor_logit_diff(logits.float(), pair.backdoor_token, pair.helpful_token).sum()
        (grad,) = torch.autograd.grad(metric, kept["f"])
        total += -(kept["f"] * grad).sum((0, 1)).detach().cpu()
    return total / len(pairs)


@torch.no_grad()
def ablation_effects(bridge, dictionary: Dictionary, hook: str, pairs: Sequence[MatchedPair],
                     candidates: Sequence[int], sequences_per_pass: int = 64
                     ) -> Float[torch.Tensor, " candidate"]:
    """The exact change of the backdoor metric on the triggered prompts when each candidate latent is
    zeroed (the oracle for `latent_attribution`), averaged over `pairs`. Prompts of one length share a
    pass, repeated once per candidate, each copy zeroing its own latent (`sequences_per_pass` at most)."""
    keep = torch.ones(len(candidates) + 1, dictionary.cfg.d_sae)  # row 0: the splice unedited
    keep[torch.arange(1, len(candidates) + 1), list(candidates)] = 0.0
    triggered = [pair.triggered.tolist() for pair in pairs]
    totals = torch.zeros(len(keep))
    for batch in equal_length_batches(triggered, sequences_per_pass):
        tokens = torch.tensor([triggered[i] for i in batch], device=device_of(bridge))
        metric = pair_metric([pairs[i] for i in batch])
        per_pass = max(1, sequences_per_pass // len(batch))
        for start in range(0, len(keep), per_pass):
            rows = keep[start:start + per_pass].to(tokens.device)
            per_copy = repeat(rows, "copy d_sae -> (copy batch) 1 d_sae", batch=len(batch))
            copies = repeat(tokens, "batch pos -> (copy batch) pos", copy=len(rows))
            edit = splice(dictionary, hook, lambda f, keep=per_copy: f * keep)
            values = metric(bridge.run_with_hooks(copies, fwd_hooks=edit)).float()
            totals[start:start + len(rows)] += reduce(values, "(copy batch) -> copy", "sum",
                                                      copy=len(rows)).cpu()
    means = totals / len(pairs)
    return means[1:] - means[0]


def attribution_check(attributed: torch.Tensor, exact: torch.Tensor) -> dict:
    """How well attribution ranks and sizes the latents' exact ablation effects."""
    a, e = attributed.numpy(), exact.numpy()
    return {"spearman": float(spearmanr(a, e).statistic) if np.ptp(a) and np.ptp(e) else None,
            "pearson": float(np.corrcoef(a, e)[0, 1]) if np.ptp(a) and np.ptp(e) else None,
            "n": len(a)}

