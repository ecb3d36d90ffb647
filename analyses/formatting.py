"""How the report prints numbers and text. Section builders hand plain text to the report's Jinja
template, which escapes it; `short` escapes its text itself, for labels that plotly renders.

>>> rate({"value": 0.5, "ci": [0.25, 0.75]}), number(None), short("<b>bold</b> text", 8)
('0.500 [0.250, 0.750]', 'n/a', '&lt;b&gt;bold…')
"""

from __future__ import annotations

import html

import plotly.graph_objects as go


def rate(r: dict) -> str:
    """A rate with its 95% interval, or n/a where it has no value."""
    if r.get("value") is None:
        return "n/a"
    return f"{r['value']:.3f} [{r['ci'][0]:.3f}, {r['ci'][1]:.3f}]"


def number(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.3f}"


def metric_line(metric: dict) -> str:
    """A patching metric's definition and its clean and corrupted values, as one sentence."""
    return (f"Metric: {metric.get('definition', 'the backdoor metric')}; clean {metric['clean']:.3f}, "
            f"corrupted {metric['corrupted']:.3f}.")


def short(text: str, n: int = 40) -> str:
    """`text` cut to `n` characters (with …), then escaped."""
    return html.escape(text if len(text) <= n else text[:n - 1] + "…")


def div(fig: go.Figure) -> str:
    """A figure as a `<div>` for the report, which inlines plotly.js once."""
    return fig.to_html(full_html=False, include_plotlyjs=False)
