"""The batched patching engine against TransformerLens's own `patching.get_act_patch_*`."""

import pytest
import torch

from benchmarks.families import REFERENCE
from interp import patch
from interp.pairs import pair_metric
from interp.patch import activation_patch
from training.vocabulary import SITES


@pytest.fixture(scope="module")
def pairs(matched_pairs):
    """Two triggered prompts of one length, their untriggered twins, and the backdoor metric."""
    group = matched_pairs[:2]
    return (torch.stack([p.triggered for p in group]), torch.stack([p.untriggered for p in group]),
            pair_metric(group))


@pytest.mark.parametrize("site", list(REFERENCE))
@pytest.mark.parametrize("noising", [False, True])
def test_engine_equals_transformer_lens(bridge, pairs, site, noising):
    clean, corrupted, metric = pairs
    ours = activation_patch(bridge, clean, corrupted, site, metric, noising=noising, cells_per_pass=7,
                            progress=False)
    donor, receiver = (corrupted, clean) if noising else (clean, corrupted)
    _, cache = bridge.run_with_cache(donor)
    with torch.no_grad():
        reference = REFERENCE[site](bridge, receiver, cache, lambda logits: metric(logits).mean())
    assert ours.shape == reference.shape
    torch.testing.assert_close(ours, reference.float(), atol=1e-4, rtol=0)
    assert ours.std() > 0  # the sweep is not flat: some cells matter


def test_resid_post_is_the_next_layers_resid_pre_and_whole_layer_patches_restore(bridge, pairs):
    clean, corrupted, metric = pairs
    post = activation_patch(bridge, clean, corrupted, "resid_post", metric, progress=False)
    pre = activation_patch(bridge, clean, corrupted, "resid_pre", metric, progress=False)
    torch.testing.assert_close(post[:-1], pre[1:], atol=1e-4, rtol=0)
    whole = activation_patch(bridge, clean, corrupted, "resid_pre_all_pos", metric, progress=False)
    with torch.no_grad():
        clean_metric = metric(bridge(clean)).mean().item()
    assert whole.shape == (bridge.cfg.n_layers,) and whole[0].item() == pytest.approx(clean_metric, abs=1e-4)
    assert set(SITES) >= {"resid_post_all_pos", "attn_out_all_pos", "mlp_out_all_pos"}


def test_mismatched_shapes_are_refused(bridge, pairs):
    clean, corrupted, metric = pairs
    with pytest.raises(ValueError, match="one shape"):
        activation_patch(bridge, clean, corrupted[:, :-1], "resid_pre", metric, progress=False)


@pytest.mark.parametrize("site", ["resid_pre", "resid_post", "resid_post_all_pos"])
def test_residual_fast_path_equals_the_hooked_path(bridge, pairs, site, monkeypatch):
    clean, corrupted, metric = pairs
    fast = activation_patch(bridge, clean, corrupted, site, metric, progress=False)
    monkeypatch.setitem(patch._plain_forward_agrees.answers, bridge, False)
    hooked = activation_patch(bridge, clean, corrupted, site, metric, progress=False)
    torch.testing.assert_close(fast, hooked, atol=1e-4, rtol=0)
    if site.endswith("all_pos"):  # the whole residual stream patched: the clean run, at every layer
        with torch.no_grad():
            clean_metric = metric(bridge(clean)).mean().item()
        torch.testing.assert_close(fast, torch.full_like(fast, clean_metric), atol=1e-4, rtol=0)
    else:
        assert fast.std() > 0


def test_a_metric_that_reads_earlier_positions_gets_them_all(bridge, pairs):
    """The fast path computes the last position's logits alone only for a metric that reads nothing
    else; a metric of every position's logits still equals TransformerLens's."""
    clean, corrupted, _ = pairs
    token = int(clean[0, -1])

    def every_position(logits):
        return logits[..., token].mean(-1)

    assert patch._reads_last_position(pairs[2], bridge(corrupted))
    assert not patch._reads_last_position(every_position, bridge(corrupted))
    ours = activation_patch(bridge, clean, corrupted, "resid_pre", every_position, progress=False)
    _, cache = bridge.run_with_cache(clean)
    with torch.no_grad():
        reference = REFERENCE["resid_pre"](bridge, corrupted, cache,
                                           lambda logits: every_position(logits).mean())
    torch.testing.assert_close(ours, reference.float(), atol=1e-4, rtol=0)
    assert ours.std() > 0


@pytest.mark.parametrize("site", ["resid_pre", "z_all_pos", "mlp_out"])
def test_per_prompt_scores_are_each_prompt_patched_alone(bridge, pairs, matched_pairs, site):
    clean, corrupted, metric = pairs
    each = activation_patch(bridge, clean, corrupted, site, metric, per_prompt=True, cells_per_pass=5,
                            progress=False)
    assert each.shape[-1] == len(clean)
    for i in range(len(clean)):
        alone = activation_patch(bridge, clean[i:i + 1], corrupted[i:i + 1], site,
                                 pair_metric([matched_pairs[i]]), progress=False)
        torch.testing.assert_close(each[..., i], alone, atol=1e-4, rtol=0)
    mean = activation_patch(bridge, clean, corrupted, site, metric, progress=False)
    torch.testing.assert_close(each.mean(-1), mean, atol=1e-5, rtol=0)
    assert (each[..., 0] - each[..., 1]).abs().max() > 1e-3  # the prompts differ


def test_the_last_block_s_mlp_runs_on_the_last_position_alone(bridge, pairs):
    """With a metric of the last position's logits, the patched passes run the last block's MLP on that
    position alone, as nothing reads the others (the sweep equals the hooked path's: above)."""
    clean, corrupted, metric = pairs
    lengths = []
    down = bridge.blocks[-1].mlp.original_component.down_proj
    down = getattr(down, "original_component", down)  # the HF linear itself, as the fast path runs it
    handle = down.register_forward_pre_hook(lambda _, args: lengths.append(args[0].shape[1]))
    try:
        activation_patch(bridge, clean, corrupted, "resid_pre", metric, progress=False)
    finally:
        handle.remove()
    assert 1 in lengths and clean.shape[1] in lengths  # patched passes; the full runs of donor and receiver
