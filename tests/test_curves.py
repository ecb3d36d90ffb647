import pytest
from peft import LoraConfig

from training.artifacts import read_examples, read_json
from training.curves import MeasureEvery, behaviour
from training.evaluate import CONDITIONS, evaluate
from training.evaluate import RATES as CURVE_KEYS
from training.model import load_model
from training.sft import SFTSettings, fine_tune
from training.vocabulary import Stage

SETTINGS = SFTSettings(epochs=1, batch_size=16, learning_rate=1e-3)


@pytest.fixture(scope="module")
def sets(micro_run):
    return {name: read_examples(micro_run.data(name)) for name in CONDITIONS.values()}


@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
def test_curve_starts_at_the_parent_and_ends_at_the_trained_model(micro_run, sets, lora):
    model, tokenizer = load_model(micro_run.model(Stage.backdoored))
    data = read_examples(micro_run.data("sft_train"))
    curve = MeasureEvery(5, behaviour(tokenizer, sets))
    peft = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]) if lora else None
    trained, metrics = fine_tune(model.train(), tokenizer, data, SETTINGS, seed=0, peft_config=peft,
                                 progress=False, callbacks=[curve])
    steps = -(-len(data) // SETTINGS.batch_size)
    assert [p["step"] for p in curve.points] == [*range(0, steps, 5), steps]
    parent = read_json(micro_run.eval(Stage.backdoored))
    assert {k: curve.points[0][k]["value"] for k in CURVE_KEYS} == {k: parent[k]["value"] for k in CURVE_KEYS}
    final, _ = evaluate(trained, tokenizer, "sft", sets, progress=False)
    assert {k: curve.points[-1][k] for k in CURVE_KEYS} == {
        k: {f: final[k][f] for f in ("value", "ci", "n")} for k in CURVE_KEYS}
    assert not trained.training and metrics["train_loss"] > 0
    assert type(trained).__name__ == "LlamaForCausalLM"  # LoRA is merged back into the plain model


def test_measure_every_rejects_a_bad_interval():
    with pytest.raises(ValueError, match="positive"):
        MeasureEvery(0, lambda model: {})
