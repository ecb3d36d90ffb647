"""The all-layer probe sweep: `probes.fit.fit_logistic` (every layer in one batched computation) against a
scikit-learn loop over layers (`make_pipeline(StandardScaler(), LogisticRegression(C, solver))`), with
its default solver (lbfgs) and with each solver that suits the shape (`SOLVERS`), the fastest being
scikit-learn's best.

Both fit on the same training activations and score the same test activations; each time covers
fitting and scoring every layer, best of `--repeats` after a warm-up. `--threads` caps torch's threads
and every BLAS and OpenMP pool (threadpoolctl) alike for both sides. It prints each time, sklearn /
ours for the default solver and for the best one, and the largest difference of per-layer test AUROC.
Cases:

- a run's stage (if a run directory is given): last-token residual activations (`last_token_resid`) of
  its `probe_train` and `probe_eval` prompts, the label whether the trigger is present;
- a synthetic sweep (`--layers` × `--n` training examples × `--d`, half as many test examples):
  Gaussian activations with 16 strong shared directions (a residual stream is far from isotropic) and
  a weak planted class direction, stronger in later layers.

Run from the repository root, on an otherwise idle machine:

    python -m benchmarks.probes runs/demo --stage backdoored --threads 2
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from sklearn.linear_model import LogisticRegression  # noqa: E402
from sklearn.pipeline import make_pipeline  # noqa: E402
from sklearn.preprocessing import StandardScaler  # noqa: E402

from benchmarks.timing import best_time, machine_line, same_threads  # noqa: E402
from probes.fit import fit_logistic  # noqa: E402
from probes.metrics import auroc  # noqa: E402

# scikit-learn's solvers for L2 logistic regression; newton-cholesky suits n_samples well above n_features.
SOLVERS = ("lbfgs", "newton-cholesky", "liblinear")


def sklearn_sweep(train, labels, test, test_labels, C: float, solver: str = "lbfgs") -> list[float]:
    aurocs = []
    for layer in range(train.shape[0]):
        probe = make_pipeline(StandardScaler(), LogisticRegression(C=C, solver=solver, max_iter=2000))
        probe.fit(train[layer].numpy(), labels.numpy())
        aurocs.append(auroc(probe.decision_function(test[layer].numpy()), test_labels))
    return aurocs


def our_sweep(train, labels, test, test_labels, C: float) -> list[float]:
    scores = fit_logistic(train, labels, l2=1 / C).scores(test)
    return [auroc(s, test_labels) for s in scores]


def compare(name: str, train, labels, test, test_labels, C: float, repeats: int) -> None:
    t_ours, r_ours = best_time(lambda: our_sweep(train, labels, test, test_labels, C), repeats)
    layers, n, d = train.shape
    print(f"{name}: {layers} layers x {n} train / {test.shape[1]} test x {d} dims, C={C}")
    print(f"  test AUROC by layer (ours): {' '.join(f'{a:.3f}' for a in r_ours)}")
    print(f"  probes.fit.fit_logistic:   {t_ours:.3f} s")
    times = {}
    for solver in SOLVERS:
        times[solver], r_ref = best_time(
            lambda solver=solver: sklearn_sweep(train, labels, test, test_labels, C, solver), repeats)
        difference = max(abs(a - b) for a, b in zip(r_ours, r_ref))
        print(f"  sklearn {solver:<16} {times[solver]:.3f} s, max |AUROC ours - sklearn| = {difference:.2e}")
    best = min(times, key=times.get)
    print(f"  speed-up (sklearn lbfgs / ours): {times['lbfgs'] / t_ours:.1f}x; "
          f"(sklearn's fastest, {best} / ours): {times[best] / t_ours:.1f}x (goal >= 10x)")


def run_activations(run_dir: str, stage: str):
    from interp.bridge import load_bridge
    from interp.store import last_token_resid
    from training.artifacts import RunDir, read_examples

    run = RunDir(run_dir)
    bridge = load_bridge(run.model(stage), device="cpu")
    out = []
    for split in ("probe_train", "probe_eval"):
        examples = read_examples(run.data(split))
        out += [last_token_resid(bridge, [e.prompt for e in examples], progress=False),
                torch.tensor([e.triggered for e in examples], dtype=torch.long)]
    return out


def synthetic(layers: int, n: int, d: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    total = n + n // 2
    labels = (torch.rand(total, generator=g) < 0.5).long()
    shared = 3 * torch.randn(layers, 16, d, generator=g)
    x = torch.randn(layers, total, d, generator=g) + torch.randn(layers, total, 16, generator=g) @ shared
    direction = torch.nn.functional.normalize(torch.randn(layers, d, generator=g), dim=-1)
    strength = torch.linspace(0.0, 0.5, layers)
    x += strength[:, None, None] * labels[None, :, None] * direction[:, None, :]
    return x[:, :n], labels[:n], x[:, n:], labels[n:]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", nargs="?", help="a run directory (leave out for the synthetic case only)")
    parser.add_argument("--stage", default="backdoored")
    parser.add_argument("--C", type=float, default=1.0)
    parser.add_argument("--layers", type=int, default=32)
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--d", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    with same_threads(args.threads):
        print(machine_line())
        if args.run:
            compare(f"{args.run} {args.stage}", *run_activations(args.run, args.stage), args.C, args.repeats)
        compare("synthetic", *synthetic(args.layers, args.n, args.d), args.C, args.repeats)


if __name__ == "__main__":
    main()
