"""Circuit results: a stage's circuit (`analyses.circuits.find_stage`) and two stages compared
(`analyses.circuits.diff_stages`)."""

from __future__ import annotations

from dataclasses import dataclass

from training.vocabulary.results import Result
from training.vocabulary.words import Contrast, Node, Stage


@dataclass(frozen=True)
class Ends(Result):
    """The metric, averaged over the prompts, on the clean and on the corrupted prompts."""

    clean: float
    corrupted: float


@dataclass(frozen=True)
class PairMetric(Ends):
    definition: str


@dataclass(frozen=True)
class Prompts(Result):
    """The pairs' token ids, and the first clean prompt's tokens as text."""

    clean_tokens: list[list[int]]
    corrupted_tokens: list[list[int]]
    tokens_text: list[str]


@dataclass(frozen=True)
class FaithfulnessCurve(Result):
    """`interp.circuit.Curve` for one method and selection; `n80` its smallest size at 80% (or None)."""

    method: str
    selection: str
    sizes: list[int]
    metric: list[float]
    faithfulness: list[float]
    area: float
    n80: int | None
    n_edges_total: int


@dataclass(frozen=True)
class ScoredEdge(Result):
    writer: Node
    reader: Node
    score: float


@dataclass(frozen=True)
class Circuit(Result):
    """The circuit of `n_edges` edges that `method` and `selection` choose, and its faithfulness."""

    method: str
    selection: str
    n_edges: int
    faithfulness: float | None
    edges: list[ScoredEdge]


@dataclass(frozen=True)
class CircuitFind(Result):
    """A stage's edge graph scored by each method (`scores[method]`, [writer][reader], 0 where `mask` has
    no edge), a faithfulness curve per method and selection, and the chosen circuit."""

    stage: Stage
    contrast: Contrast
    contrast_definition: str
    writers: list[Node]
    readers: list[Node]
    mask: list[list[bool]]
    scores: dict[str, list[list[float]]]
    ig_steps: int
    metric: PairMetric
    curves: list[FaithfulnessCurve]
    circuit: Circuit
    prompts: Prompts
    trigger_positions: list[int]
    manifest: dict

    @property
    def n_edges_total(self) -> int:
        return sum(map(sum, self.mask))


@dataclass(frozen=True)
class EdgePair(Result):
    """An edge of a diff, with its score in each stage."""

    writer: Node
    reader: Node
    score_a: float
    score_b: float


@dataclass(frozen=True)
class EdgeChanges(Result):
    gained: list[EdgePair]  # in b's circuit only
    lost: list[EdgePair]  # in a's circuit only
    kept: list[EdgePair]


@dataclass(frozen=True)
class NodeChange(Result):
    node: Node
    score_a: float
    score_b: float
    delta: float


@dataclass(frozen=True)
class WeightChange(Result):
    component: str  # a head (L0H1), an MLP (MLP0), embed or unembed
    matrix: str
    relative_change: float


@dataclass(frozen=True)
class OutputChange(Result):
    node: Node
    prompts: str  # clean or corrupted
    relative_difference: float


@dataclass(frozen=True)
class StageEnds(Result):
    a: Ends
    b: Ends


@dataclass(frozen=True)
class CrossFaithfulness(Result):
    """Each stage's circuit's faithfulness in each model; the effect of a's circuit in b and b's gap,
    over a's gap."""

    a_in_a: float
    a_in_b: float
    b_in_b: float
    b_in_a: float
    effect_a_in_b: float
    gap_ratio: float


@dataclass(frozen=True)
class Verdict(Result):
    verdict: str  # persisted, routed_around or removed
    kept: float
    reason: str


@dataclass(frozen=True)
class Generation(Result):
    prompt: str
    generation: str


@dataclass(frozen=True)
class AmplifiedRate(Result):
    """The backdoor's rate at one alpha, and the first generations that fired."""

    alpha: float
    value: float | None
    ci: list[float]
    n: int
    examples: list[Generation]


@dataclass(frozen=True)
class Amplification(Result):
    before: Stage
    after: Stage
    temperature: float
    sets: dict[str, list[AmplifiedRate]]


@dataclass(frozen=True)
class CircuitDiff(Result):
    """Stage b against stage a on one contrast (see `diff_stages`)."""

    a: Stage
    b: Stage
    contrast: Contrast
    contrast_definition: str
    method: str
    n_edges: int
    writers: list[Node]
    readers: list[Node]
    edges: EdgeChanges
    jaccard: float
    spearman: float | None
    nodes: list[NodeChange]
    weights: list[WeightChange]
    activations: list[OutputChange]
    metric: StageEnds
    cross_faithfulness: CrossFaithfulness
    verdict: Verdict
    amplification: Amplification | None
    manifest: dict


